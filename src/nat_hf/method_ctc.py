"""CTC for non-autoregressive translation: the math of the `ctc` method (torch only).

Libovicky & Helcl (2018) and Saharia et al. (2020): the decoder runs on `ratio x source length` positions, each
predicting a token or a `blank`; an output is read off an alignment by merging adjacent repeats and then removing
blanks, and training maximises the sum over all alignments that collapse to the reference. No length predictor.

First the pieces that do not need the model: the upsampled decoder length, the loss (a wrapper of
`torch.nn.functional.ctc_loss` that skips and counts targets that cannot fit), the collapse, the most probable
alignment (a batched Viterbi, used for glancing on CTC) and greedy decoding. Then the method itself, `CTCMethod`
(registered as `ctc` in `methods.py`): its options, config rules, loss (optionally with glancing on the best
alignment, Gu & Kong, 2021) and one-pass greedy decoding. Shapes: `B` batch, `L` decoder (alignment) positions,
`V` vocabulary (blank included), `T` target tokens.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .method_base import (
    Hypotheses,
    LossOutput,
    NATMethod,
    check_finite,
    left_pack,
    predict_tokens,
    special_token_ids,
)
from .method_glat import GlancingOptions, glancing_reveal


class CTCLossOutput(NamedTuple):
    """The batch loss and how many rows were left out of it because their target cannot fit their positions."""

    loss: torch.Tensor  # [] mean over the kept rows of -log P(target) / max(target length, 1)
    skipped: int


class CTCAlignment(NamedTuple):
    """The most probable alignment of each row, its log-probability and whether one exists."""

    alignment: torch.Tensor  # [B, L] a label per position (blank included); blank past the input length
    score: torch.Tensor  # [B] log-probability of that alignment; -inf where infeasible
    feasible: torch.Tensor  # [B] bool


class CTCHypotheses(NamedTuple):
    """Greedy CTC output: collapsed tokens, their lengths and the mean log-probability of the argmax alignment."""

    tokens: torch.Tensor  # [B, L'] right-padded with pad
    lengths: torch.Tensor  # [B]
    scores: torch.Tensor  # [B]


def upsampled_lengths(source_lengths: torch.Tensor, ratio: float, max_positions: int) -> torch.Tensor:
    """Decoder length of each row: `ceil(ratio x source length)`.

    A CTC decoder needs at least as many positions as target tokens (plus one per adjacent repeat), hence the
    upsampling. A length over `max_positions` (the decoder's position table) raises instead of being clipped:
    clipping would silently make long targets infeasible; the method should validate
    `max_target_positions >= ratio x max_source_positions` when the config is built.

    Args:
        source_lengths: `[B]` source token counts (end-of-sentence included if the encoder sees it).
        ratio: upsampling ratio, > 0 (e.g. 2, 3, 8).
        max_positions: the most decoder positions the model has.

    Returns:
        `[B]` long tensor of decoder lengths.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"upsampling ratio must be a finite number > 0, got {ratio!r}")
    if source_lengths.dim() != 1:
        raise ValueError(f"source_lengths must be 1-D [batch], got shape {tuple(source_lengths.shape)}")
    if source_lengths.numel() and int(source_lengths.min()) < 0:
        raise ValueError(f"source_lengths must be >= 0, got {source_lengths.tolist()}")
    # float64 and a tiny slack so that e.g. 1.1 x 10 gives 11, not 12
    lengths = torch.ceil(source_lengths.to(torch.float64) * float(ratio) - 1e-9).clamp(min=0).long()
    if lengths.numel() and int(lengths.max()) > max_positions:
        longest = int(source_lengths[lengths.argmax()])
        raise ValueError(
            f"upsampled length {int(lengths.max())} (ratio {ratio} x source length {longest}) exceeds the "
            f"decoder's {max_positions} positions; raise max_target_positions or shorten the source"
        )
    return lengths


def required_input_lengths(target: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """The fewest alignment positions that can produce each target: its length plus one blank per adjacent repeat.

    Args:
        target: `[B, T]` right-padded target ids.
        target_lengths: `[B]`.

    Returns:
        `[B]` long tensor.
    """
    valid = torch.arange(target.size(1), device=target.device) < target_lengths[:, None]
    repeats = (target[:, 1:] == target[:, :-1]) & valid[:, 1:]
    return target_lengths.long() + repeats.sum(dim=1)


def _check_alignment_inputs(
    token_logprobs: torch.Tensor,
    input_lengths: torch.Tensor,
    target: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int,
) -> None:
    """Typed errors for the shapes and values `ctc_loss` and `ctc_best_alignment` rely on."""
    if token_logprobs.dim() != 3:
        raise ValueError(f"token_logprobs must be [batch, positions, vocab], got shape {tuple(token_logprobs.shape)}")
    batch, positions, vocab = token_logprobs.shape
    if not 0 <= blank < vocab:
        raise ValueError(f"blank id {blank} is outside the vocabulary of size {vocab}")
    if input_lengths.shape != (batch,) or target_lengths.shape != (batch,):
        raise ValueError(
            f"input_lengths and target_lengths must be [{batch}], got {tuple(input_lengths.shape)} and "
            f"{tuple(target_lengths.shape)}"
        )
    if target.dim() != 2 or target.size(0) != batch:
        raise ValueError(f"target must be [{batch}, target_len], got shape {tuple(target.shape)}")
    if batch == 0:
        return
    if int(input_lengths.min()) < 0 or int(input_lengths.max()) > positions:
        raise ValueError(f"input_lengths must lie in [0, {positions}], got {input_lengths.tolist()}")
    if int(target_lengths.min()) < 0 or int(target_lengths.max()) > target.size(1):
        raise ValueError(f"target_lengths must lie in [0, {target.size(1)}], got {target_lengths.tolist()}")
    valid = torch.arange(target.size(1), device=target.device) < target_lengths[:, None]
    real = target[valid]
    if real.numel() and (int(real.min()) < 0 or int(real.max()) >= vocab):
        raise ValueError(f"target ids must lie in [0, {vocab}) within target_lengths")
    if bool((real == blank).any()):
        raise ValueError(f"the blank id {blank} appears inside a target; a CTC target cannot contain the blank")


def _blank_padded(target: torch.Tensor, target_lengths: torch.Tensor, blank: int) -> torch.Tensor:
    """`target` as long with its padding replaced by blank, so that any padding value can be gathered."""
    valid = torch.arange(target.size(1), device=target.device) < target_lengths[:, None]
    return target.long().masked_fill(~valid, blank)


def ctc_loss(
    token_logprobs: torch.Tensor,
    input_lengths: torch.Tensor,
    target: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int,
) -> CTCLossOutput:
    """Mean over the batch of `-log P(target | x) / target length`, by `torch.nn.functional.ctc_loss`.

    `P(target | x)` sums, over every alignment of `input_lengths[b]` labels that collapses to the target, the
    product of the per-position probabilities. The normalisation equals `ctc_loss(reduction="mean")`: each row's
    negative log-likelihood is divided by its target length (at least 1) and the rows are averaged.

    A target that cannot fit (`target_length + adjacent repeats > input_length`) has probability 0: such rows are
    found beforehand, left out of the mean and counted in `skipped`; `zero_infinity` stays False, so an infinite
    loss on a row that does fit (only possible when the log-probabilities hold -inf) is not hidden but raises
    `FloatingPointError`. If every row is skipped the loss is a 0 that still backpropagates (zero gradients), and
    `skipped` equals the batch size: the caller logs it.

    Gradients are exact for `token_logprobs` computed by `log_softmax` (torch's backward folds the softmax
    Jacobian in, so it is not the gradient with respect to arbitrary unnormalised scores).

    Args:
        token_logprobs: `[B, L, V]` log-probabilities (log_softmax over V), float32 or float64.
        input_lengths: `[B]` alignment positions used per row (<= L).
        target: `[B, T]` target ids, right-padded (padding values are ignored), no blank inside the length.
        target_lengths: `[B]`.
        blank: the blank id.

    Returns:
        `CTCLossOutput(loss, skipped)`.
    """
    _check_alignment_inputs(token_logprobs, input_lengths, target, target_lengths, blank)
    input_lengths, target_lengths = input_lengths.long(), target_lengths.long()
    keep = required_input_lengths(target, target_lengths) <= input_lengths
    skipped = int((~keep).sum())
    if skipped == token_logprobs.size(0):
        return CTCLossOutput(token_logprobs.sum() * 0.0, skipped)
    target = _blank_padded(target, target_lengths, blank)  # padding may be -100 or any value: make it harmless
    if skipped:
        token_logprobs, input_lengths = token_logprobs[keep], input_lengths[keep]
        target, target_lengths = target[keep], target_lengths[keep]
    if token_logprobs.size(1) == 0:  # torch refuses 0 positions; only empty targets are kept, each with P = 1
        return CTCLossOutput(token_logprobs.sum() * 0.0, skipped)
    if target.size(1) == 0:  # torch wants a non-empty target tensor even when all lengths are 0
        target = target.new_zeros(target.size(0), 1)
    nll = F.ctc_loss(
        token_logprobs.transpose(0, 1),  # torch's layout: [L, B, V]
        target.long(),
        input_lengths,
        target_lengths,
        blank=blank,
        reduction="none",
        zero_infinity=False,
    )
    if not bool(torch.isfinite(nll).all()):
        raise FloatingPointError(
            "ctc_loss is not finite on a row whose target fits its positions: the log-probabilities hold -inf "
            "(or NaN) at labels the target needs"
        )
    return CTCLossOutput((nll / target_lengths.clamp(min=1).to(nll.dtype)).mean(), skipped)


def ctc_collapse(
    tokens: torch.Tensor, lengths: torch.Tensor, blank: int, pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read outputs off alignments: merge adjacent repeats, then drop blanks (so `a a _ a` gives `a a`).

    Args:
        tokens: `[B, L]` labels, right-padded (values past `lengths` are ignored).
        lengths: `[B]` valid positions per row.
        blank: the blank id.
        pad: the padding id of the output.

    Returns:
        `(collapsed [B, L'], collapsed_lengths [B])`, right-padded with `pad`; `L'` is the longest output.
    """
    if tokens.dim() != 2 or lengths.shape != (tokens.size(0),):
        raise ValueError(f"tokens must be [batch, positions] and lengths [batch], got {tuple(tokens.shape)} and "
                         f"{tuple(lengths.shape)}")
    batch, positions = tokens.shape
    if batch and (int(lengths.min()) < 0 or int(lengths.max()) > positions):
        raise ValueError(f"lengths must lie in [0, {positions}], got {lengths.tolist()}")
    valid = torch.arange(positions, device=tokens.device) < lengths[:, None]
    new_label = torch.ones_like(valid)
    new_label[:, 1:] = tokens[:, 1:] != tokens[:, :-1]
    return left_pack(tokens, valid & new_label & (tokens != blank), pad)


def ctc_best_alignment(
    token_logprobs: torch.Tensor,
    input_lengths: torch.Tensor,
    target: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int,
) -> CTCAlignment:
    """The most probable alignment that collapses to each target (Viterbi; used to glance on CTC).

    A dynamic programme over time on the extended label sequence `blank, y1, blank, y2, ..., yT, blank`
    (`2T + 1` states): a state is reached from itself, from the state before, or from two before when it is a
    label differing from the label two before (the blank between them may be skipped). The best final state is
    the last label or the trailing blank; back-pointers give the path. Batched: the only Python loop runs over
    positions. Rows whose target cannot fit (or whose every alignment has probability 0) are flagged infeasible,
    score -inf, alignment all blank.

    Args:
        token_logprobs: `[B, L, V]` log-probabilities.
        input_lengths: `[B]` positions used per row.
        target: `[B, T]` right-padded target ids, no blank inside the length.
        target_lengths: `[B]`.
        blank: the blank id.

    Returns:
        `CTCAlignment(alignment [B, L], score [B], feasible [B])`; positions past `input_lengths` hold blank.
    """
    _check_alignment_inputs(token_logprobs, input_lengths, target, target_lengths, blank)
    batch, positions, _ = token_logprobs.shape
    device = token_logprobs.device
    input_lengths, target_lengths = input_lengths.long(), target_lengths.long()
    states = 2 * target.size(1) + 1
    extended = target.new_full((batch, states), blank).long()
    extended[:, 1::2] = _blank_padded(target, target_lengths, blank)
    state_index = torch.arange(states, device=device)
    in_row = state_index < (2 * target_lengths + 1)[:, None]  # [B, S]
    skip_allowed = torch.zeros(batch, states, dtype=torch.bool, device=device)
    skip_allowed[:, 2:] = (extended[:, 2:] != blank) & (extended[:, 2:] != extended[:, :-2])
    neg_inf = torch.tensor(float("-inf"), dtype=token_logprobs.dtype, device=device)
    # emissions[b, t, s] = log p_t(extended[b, s])
    emissions = token_logprobs.gather(2, extended[:, None, :].expand(batch, positions, states))
    emissions = torch.where(in_row[:, None, :], emissions, neg_inf)
    backpointer = torch.zeros(batch, positions, states, dtype=torch.uint8, device=device)
    delta = torch.full((batch, states), float("-inf"), dtype=token_logprobs.dtype, device=device)
    if positions:
        delta[:, :2] = emissions[:, 0, :2]
    for t in range(1, positions):
        stay = delta
        step = F.pad(delta, (1, 0), value=float("-inf"))[:, :states]
        skip = torch.where(skip_allowed, F.pad(delta, (2, 0), value=float("-inf"))[:, :states], neg_inf)
        best, choice = torch.stack([stay, step, skip], dim=-1).max(dim=-1)
        active = (t < input_lengths)[:, None]
        delta = torch.where(active, best + emissions[:, t], delta)
        backpointer[:, t] = torch.where(active, choice, 0).to(torch.uint8)
    last = 2 * target_lengths  # trailing blank
    end_blank = delta.gather(1, last[:, None]).squeeze(1)
    end_label = torch.where(target_lengths > 0, delta.gather(1, (last - 1).clamp(min=0)[:, None]).squeeze(1), neg_inf)
    score = torch.maximum(end_blank, end_label)
    state = torch.where(end_label > end_blank, last - 1, last)
    # an empty alignment (0 positions) has probability 1 for the empty target and 0 for any other
    empty = input_lengths == 0
    score = torch.where(empty, torch.where(target_lengths == 0, 0.0, float("-inf")).to(score.dtype), score)
    fits = required_input_lengths(target, target_lengths) <= input_lengths
    feasible = fits & torch.isfinite(score)
    score = torch.where(feasible, score, neg_inf)
    alignment = torch.full((batch, positions), blank, dtype=torch.long, device=device)
    for t in range(positions - 1, -1, -1):
        active = (t < input_lengths) & feasible
        alignment[:, t] = torch.where(active, extended.gather(1, state[:, None]).squeeze(1), blank)
        back = backpointer[:, t].gather(1, state[:, None]).squeeze(1).long()
        state = torch.where(active, state - back, state)
    return CTCAlignment(alignment, score, feasible)


def ctc_greedy_decode(
    token_logprobs: torch.Tensor,
    lengths: torch.Tensor,
    blank: int,
    pad: int,
    forbidden_ids: Sequence[int] = (),
) -> CTCHypotheses:
    """One-pass CTC decoding: the best label per position, then `ctc_collapse`.

    `forbidden_ids` (e.g. pad, eos, mask, unk) are never chosen; the blank cannot be forbidden. The score is the
    mean over the row's positions of the chosen labels' log-probabilities (not renormalised after forbidding),
    i.e. log P(argmax alignment) / length; 0 for a row with no positions.

    Args:
        token_logprobs: `[B, L, V]` log-probabilities.
        lengths: `[B]` positions used per row.
        blank: the blank id.
        pad: the padding id of the output.
        forbidden_ids: ids never emitted.

    Returns:
        `CTCHypotheses(tokens [B, L'], lengths [B], scores [B])`.
    """
    if token_logprobs.dim() != 3:
        raise ValueError(f"token_logprobs must be [batch, positions, vocab], got shape {tuple(token_logprobs.shape)}")
    batch, positions, vocab = token_logprobs.shape
    forbidden = sorted(set(int(i) for i in forbidden_ids))
    if not 0 <= blank < vocab:
        raise ValueError(f"blank id {blank} is outside the vocabulary of size {vocab}")
    if blank in forbidden:
        raise ValueError(f"the blank id {blank} cannot be forbidden: CTC decoding must be able to emit it")
    if forbidden and (forbidden[0] < 0 or forbidden[-1] >= vocab):
        raise ValueError(f"forbidden ids {forbidden} must lie in [0, {vocab})")
    if lengths.shape != (batch,) or (batch and (int(lengths.min()) < 0 or int(lengths.max()) > positions)):
        raise ValueError(f"lengths must be [{batch}] with values in [0, {positions}], got {lengths.tolist()}")
    scores = token_logprobs
    if forbidden:
        scores = token_logprobs.clone()
        scores[..., forbidden] = float("-inf")
    best, labels = scores.max(dim=-1)
    valid = torch.arange(positions, device=labels.device) < lengths[:, None]
    mean = torch.where(valid, best, 0.0).sum(dim=1) / lengths.clamp(min=1).to(best.dtype)
    tokens, out_lengths = ctc_collapse(labels, lengths, blank, pad)
    return CTCHypotheses(tokens, out_lengths, mean)


# ------------------------------------------------------------------------------------------------ the method
@dataclass
class CTCTrainingOptions(GlancingOptions):
    """The `ctc` method's training options (in `NATConfig.method_options`): the upsampling ratio, and the glancing
    schedule of `GlancingOptions` (off by default: start ratio 0; GLAT+CTC when set, Gu & Kong, 2021)."""

    upsample_ratio: float = 3.0  # decoder positions per source token (end-of-sentence included); Libovicky: 3

    def validate(self, config=None) -> None:
        """ValueError naming the option. The ratio must be a finite number >= 1: CTC emits at most one token per
        decoder position, so a decoder shorter than its source could not fit targets about as long as their
        source, and they would all be skipped."""
        super().validate(config)
        ratio = self.upsample_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 1:
            raise ValueError(f"NATConfig: method_options `upsample_ratio` must be a finite number >= 1 (CTC emits "
                             f"at most one token per decoder position), got {ratio!r}")
        self.upsample_ratio = float(ratio)


CTC_DECODING_STRATEGIES = ("greedy",)


@dataclass
class CTCOptions:
    """Decoding options of `ctc` (a model's `generation_config` holds its defaults)."""

    decoding_strategy: str = field(default="greedy", metadata={"help": "CTC decoding (ctc: greedy)"})

    def validate(self, config=None) -> None:
        """ValueError naming the option when it is malformed."""
        if not isinstance(self.decoding_strategy, str) or self.decoding_strategy not in CTC_DECODING_STRATEGIES:
            raise ValueError(f"decoding_strategy must be one of {list(CTC_DECODING_STRATEGIES)} with method 'ctc', "
                             f"got {self.decoding_strategy!r}")


class CTCMethod(NATMethod):
    """CTC NAT (Libovicky & Helcl, 2018; Saharia et al., 2020): the decoder runs on `ceil(upsample_ratio x source
    length)` positions (end-of-sentence counted) fed with `<mask>` ids (a copy-mode decoder copies the source
    there), each position predicts a token or the blank, and the loss sums over every alignment that collapses to
    the reference (`ctc_loss`). No length predictor: the output length is what the collapse leaves. Decoding is one
    pass: the best label per position, then `ctc_collapse`.

    The blank: `config.blank_token_id` must be set. The Multi30k teacher's vocabulary has none, so the training
    code appends one (id = the teacher's vocabulary size, the embedding grown by one row).

    Glancing (GLAT+CTC, Gu & Kong, 2021, "Fully Non-autoregressive Neural Machine Translation"), when the ratio of
    `GlancingOptions` is > 0: a first pass without gradient, the most probable alignment of the reference under it
    (`ctc_best_alignment`), its Hamming distance d to the first pass's argmax labels, and `round(ratio x d)`
    positions (uniformly at random) whose aligned label (blank included) becomes the second pass's decoder input;
    the CTC loss of the second pass covers the whole sequence."""

    name = "ctc"
    summary = ("an upsampled decoder (a fixed multiple of the source length) trained with CTC over a blank token; "
               "one pass, then repeats and blanks are removed (no length predictor)")
    paper = ('Libovický & Helcl, 2018, "End-to-End Non-Autoregressive Neural Machine Translation with Connectionist '
             'Temporal Classification"; Saharia et al., 2020, "Non-Autoregressive Machine Translation with Latent '
             'Alignments"')
    Options = CTCOptions
    TrainingOptions = CTCTrainingOptions

    def validate_config(self, config) -> None:
        """A blank token, and a decoder long enough for the upsampled longest source (ValueError naming them)."""
        if config.blank_token_id is None:
            raise ValueError("NATConfig: `blank_token_id` must be set with objective 'ctc' (the teacher's vocabulary "
                             "has no blank: append one, e.g. id = vocabulary size, and grow vocab_size by one)")
        ratio = self.training_options(config).upsample_ratio
        needed = math.ceil(ratio * config.max_source_positions - 1e-9)  # as `upsampled_lengths` rounds
        if config.max_target_positions < needed:
            raise ValueError(
                f"NATConfig: `max_target_positions` ({config.max_target_positions}) must be >= upsample_ratio "
                f"({ratio}) x `max_source_positions` ({config.max_source_positions}) = {needed} with objective "
                "'ctc', so that every accepted source fits its decoder"
            )

    def is_single_pass(self, options: dict) -> bool:
        return True

    def excluded_ids(self, config) -> list[int]:
        """Ids no position predicts: the special tokens except the blank."""
        return [i for i in special_token_ids(config) if i != config.blank_token_id]

    def plan(self, config, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The decoder plan of a source batch (`attention_mask` `[batch, source_len]` bool): vertex counts
        `[batch]` (upsampled source lengths, end-of-sentence included), their bool mask `[batch, positions]` and
        the decoder input ids `[batch, positions]` (all `<mask>`)."""
        ratio = self.training_options(config).upsample_ratio
        lengths = upsampled_lengths(attention_mask.sum(-1), ratio, config.max_target_positions)
        width = max(int(lengths.max()), 1) if lengths.numel() else 1
        positions_mask = torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]
        decoder_input_ids = torch.full(positions_mask.shape, config.mask_token_id, dtype=torch.long,
                                       device=lengths.device)
        return lengths, positions_mask, decoder_input_ids

    def loss(self, model, context, target: torch.Tensor, target_mask: torch.Tensor, step: int | None = None
             ) -> LossOutput:
        """CTC loss of the reference over the upsampled positions (term `token`); `counts["skipped_targets"]`
        counts the rows left out because their target cannot fit (never a NaN or infinite loss)."""
        config = model.config
        blank = config.blank_token_id
        lengths, positions_mask, decoder_input_ids = self.plan(config, context.attention_mask)
        target_lengths = target_mask.sum(-1)
        ratio = self.training_options(config).loss_ratio(model.training, step)
        if ratio > 0:
            with torch.no_grad():
                first = model.lm_head(model.model.decode(decoder_input_ids, positions_mask, context))
                first_logprobs = first.float().log_softmax(-1)  # [batch, positions, vocab]
                predicted = first_logprobs.clone()
                predicted[..., self.excluded_ids(config)] = float("-inf")
                predicted = predicted.argmax(-1)  # [batch, positions], blank allowed
                best = ctc_best_alignment(first_logprobs, lengths, target, target_lengths, blank)
                candidates = positions_mask & best.feasible[:, None]
                mismatches = (predicted != best.alignment) & candidates
                revealed = glancing_reveal(mismatches, candidates, ratio)
                decoder_input_ids = torch.where(revealed, best.alignment, decoder_input_ids)
        logits = model.decoder_logits(decoder_input_ids, positions_mask, context)  # [batch, positions, vocab]
        result = ctc_loss(logits.float().log_softmax(-1), lengths, target, target_lengths, blank)
        return LossOutput(total=result.loss, terms={"token": result.loss}, logits=logits,
                          counts={"skipped_targets": torch.tensor(result.skipped, device=logits.device)})

    def decode(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, options: dict,
               forced_lengths: torch.Tensor | None = None) -> Hypotheses:
        """One pass: the encoder once, the decoder over the upsampled positions, the best label per position
        (special tokens but the blank excluded; the projection chunked by `predict_tokens`), `ctc_collapse`, the
        output cut to `options["max_length"]` tokens. Score: the mean log-probability of the chosen labels over
        the row's positions. A source holding only end-of-sentence gets an empty translation. `forced_lengths`
        raises ValueError: CTC plans no output length (it is what the collapse leaves)."""
        if forced_lengths is not None:
            raise ValueError("forced_lengths does not apply to method 'ctc': its output length is what the collapse "
                             "of the upsampled positions leaves, not a planned length")
        config = model.config
        lengths, positions_mask, decoder_input_ids = self.plan(config, attention_mask)
        encoder_hidden_states = model.model.encode(input_ids, attention_mask)
        context = model.model.make_context(input_ids, attention_mask, encoder_hidden_states)
        hidden = model.model.decode(decoder_input_ids, positions_mask, context)
        labels, label_scores = predict_tokens(hidden, model.lm_head, self.excluded_ids(config),
                                              with_scores=options["return_dict_in_generate"])
        scores = torch.where(positions_mask, label_scores, 0.0).sum(-1) / lengths.clamp(min=1)  # [batch]
        check_finite({"token scores": scores})  # the one check on values: raises rather than return garbage
        tokens, out_lengths = ctc_collapse(labels, lengths, config.blank_token_id, config.pad_token_id)
        empty_source = (attention_mask & (input_ids != config.eos_token_id)).sum(-1) == 0  # [batch]
        out_lengths = out_lengths.clamp(max=options["max_length"]).masked_fill(empty_source, 0)
        scores = scores.masked_fill(empty_source, 0.0)
        return Hypotheses(tokens=tokens, lengths=out_lengths, scores=scores)

    def timing_pass(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One encoder pass and one decoder pass with output projection over the upsampled positions; returns the
        argmax labels (no collapse, no bookkeeping)."""
        _, positions_mask, decoder_input_ids = self.plan(model.config, attention_mask)
        hidden = model.model.encode(input_ids, attention_mask)
        context = model.model.make_context(input_ids, attention_mask, hidden)
        return model.decoder_logits(decoder_input_ids, positions_mask, context).argmax(-1)
