"""The `axe` method: aligned cross-entropy (Ghazvininejad, Karpukhin, Zettlemoyer & Levy, 2020, "Aligned Cross
Entropy for Non-Autoregressive Machine Translation").

A one-pass NAT with a length predictor (vanilla's decoder: `<mask>` inputs, or the copied source) whose token loss
does not pin target token i to decoder position i. It is the cost of the best monotonic alignment between the target
and the positions, where a position may emit the blank (`config.blank_token_id`) and a target token may be skipped
at a penalty. A prediction that is right but shifted by one, which cross-entropy punishes at every position after
the shift, costs one skip. Decoding: length candidates, one pass, the best token per position (the blank allowed),
blanks removed, the candidate with the best mean log-probability over its positions.

The recurrence (target Y_1..Y_n, positions 1..m with distributions P_j, blank ε), A[i, j] the cost of the best
alignment of Y_1..Y_i with positions 1..j:

    A[0, 0] = 0
    A[i, j] = min( A[i-1, j-1] - log P_j(Y_i),        align: position j emits Y_i
                   A[i,   j-1] - log P_j(ε),          skip position j: it emits the blank
                   A[i-1, j  ] - δ log P_j'(Y_i) )    skip target i, j' = max(j, 1), δ = `skip_target_weight`
    loss of a sentence = A[n, m]

The batch loss is the sum over sentences divided by the number of target tokens. As in the paper, the decoder runs
at the reference length in training (m = n; the length predictor learns n) and the minimum's subgradient trains
the best alignment's moves only. `config.label_smoothing` ε_ls smooths the align moves:
`-(1 - ε_ls) log P_j(Y_i) - ε_ls mean_v log P_j(v)`.

Each target row i is one vectorised step (no loop over positions): with C[j] the better of the align and
skip-target moves into (i, j) and E[j] = sum_{l <= j} -log P_l(ε), the skip-position moves give
A[i, j] = E[j] + min_{k <= j} (C[k] - E[k]), a `torch.cummin`.
"""

import numbers
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .method_base import (
    DecodingState,
    Hypotheses,
    LengthHeadMethod,
    best_candidates,
    check_finite,
    check_length_beam,
    left_pack,
    predict_tokens,
    special_token_ids,
)


def axe_alignment_costs(
    log_probs: torch.Tensor,
    lengths: torch.Tensor,
    target: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int,
    skip_target_weight: float = 1.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The cost A[n, m] of each row's best alignment (the module docstring's recurrence).

    Args:
        log_probs: `[B, M, V]` log-probabilities of the decoder positions (float).
        lengths: `[B]` positions m of each row (<= M; >= 1 where the row has target tokens); positions past it
            are ignored.
        target: `[B, N]` target ids; values past `target_lengths` are ignored.
        target_lengths: `[B]` target tokens n of each row (<= N).
        blank: the blank id.
        skip_target_weight: δ, the weight of -log P_j(Y_i) when target token i is skipped.
        label_smoothing: ε_ls of the align moves.

    Returns:
        `[B]` costs (differentiable in `log_probs`).
    """
    batch, positions, vocab = log_probs.shape
    if target.dim() != 2 or target.shape[0] != batch or lengths.shape != (batch,) or target_lengths.shape != (batch,):
        raise ValueError(f"log_probs must be [batch, positions, vocab], target [batch, tokens], lengths and "
                         f"target_lengths [batch]; got {tuple(log_probs.shape)}, {tuple(target.shape)}, "
                         f"{tuple(lengths.shape)}, {tuple(target_lengths.shape)}")
    if batch and (int(lengths.max()) > positions or int(target_lengths.max()) > target.shape[1]):
        raise ValueError(f"lengths must be <= {positions} positions and target_lengths <= {target.shape[1]} tokens")
    if batch and bool(((lengths == 0) & (target_lengths > 0)).any()):  # a skipped token is scored by a position
        raise ValueError("a row with target tokens needs at least one decoder position")
    if positions == 0:
        return log_probs.new_zeros(batch)
    tokens = target.clamp(0, vocab - 1)
    token_cost = -log_probs.gather(-1, tokens[:, None, :].expand(-1, positions, -1)).transpose(1, 2)  # [B, N, M]
    align_cost = token_cost
    if label_smoothing > 0:
        align_cost = (1 - label_smoothing) * token_cost - label_smoothing * log_probs.mean(-1)[:, None, :]
    skip_target_cost = skip_target_weight * torch.cat([token_cost[..., :1], token_cost], dim=-1)  # [B, N, M+1]
    blank_prefix = F.pad((-log_probs[..., blank]).cumsum(-1), (1, 0))  # E: [B, M+1], E[0] = 0
    previous = blank_prefix  # A[0, j] = E[j]
    table = [previous]
    for i in range(target.shape[1]):
        into = previous + skip_target_cost[:, i]  # skip target i+1: from (i, j) to (i+1, j)
        into = torch.cat([into[:, :1], torch.minimum(into[:, 1:], previous[:, :-1] + align_cost[:, i])], dim=-1)
        previous = blank_prefix + (into - blank_prefix).cummin(-1).values
        table.append(previous)
    table = torch.stack(table, dim=1)  # [B, N+1, M+1]
    rows = torch.arange(batch, device=log_probs.device)
    return table[rows, target_lengths, lengths]


def remove_blanks(tokens: torch.Tensor, lengths: torch.Tensor, blank: int, pad: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the blanks of each row, keeping the order of the rest.

    Args:
        tokens: `[B, L]` ids, right-padded (values past `lengths` are ignored).
        lengths: `[B]` valid positions per row.

    Returns:
        `(tokens [B, L'], lengths [B])`, right-padded with `pad`; `L'` the longest result.
    """
    valid = torch.arange(tokens.shape[1], device=tokens.device) < lengths[:, None]
    return left_pack(tokens, valid & (tokens != blank), pad)


@dataclass
class AXEOptions:
    """Decoding options of `axe` (one pass)."""

    length_beam: int = field(default=1, metadata={"help": "length candidates per sentence (NAT; default: the "
                                                          "model's)"})

    def validate(self, config) -> None:
        self.length_beam = check_length_beam(self.length_beam, config)


@dataclass
class AXETrainingOptions:
    """AXE's loss (in `NATConfig.method_options`)."""

    skip_target_weight: float = 1.0  # δ: weight of -log P_j(Y_i) when target token i is skipped (> 0)

    def validate(self, config=None) -> None:
        weight = self.skip_target_weight
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not weight > 0:
            raise ValueError(f"NATConfig: method_options `skip_target_weight` must be a number > 0, got {weight!r}")
        self.skip_target_weight = float(weight)


class AXEMethod(LengthHeadMethod):
    """One-pass NAT trained with aligned cross-entropy (see the module docstring); needs a blank token."""

    name = "axe"
    summary = ("one-pass non-autoregressive translation with a length predictor, trained with aligned cross-entropy "
               "(the best monotonic alignment of the reference to the positions, which may emit a blank); blanks "
               "are removed after decoding")
    paper = ('Ghazvininejad et al., 2020, "Aligned Cross Entropy for Non-Autoregressive Machine Translation"')
    Options = AXEOptions
    TrainingOptions = AXETrainingOptions
    predicts_target_positions = False  # its positions may hold blanks: position i is not target token i

    def validate_config(self, config) -> None:
        """A blank token (ValueError naming `blank_token_id`); both decoder input modes suit one-pass training."""
        if config.blank_token_id is None:
            raise ValueError("NATConfig: `blank_token_id` must be set with objective 'axe' (the teacher's vocabulary "
                             "has no blank: append one, e.g. id = vocabulary size, and grow vocab_size by one)")

    def is_single_pass(self, options: dict) -> bool:
        return options["length_beam"] == 1

    def excluded_ids(self, config) -> list[int]:
        """Ids no position predicts: the special tokens except the blank."""
        return [i for i in special_token_ids(config) if i != config.blank_token_id]

    def token_loss(self, model, context, target, target_mask, step=None) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass at the reference length from `<mask>` inputs; the AXE cost of each sentence, summed and divided
        by the batch's target tokens."""
        config = model.config
        decoder_input_ids = target.masked_fill(target_mask, config.mask_token_id)
        logits = model.decoder_logits(decoder_input_ids, target_mask, context)  # [batch, target_len, vocab]
        lengths = target_mask.sum(-1)
        costs = axe_alignment_costs(logits.float().log_softmax(-1), lengths, target, lengths, config.blank_token_id,
                                    self.training_options(config).skip_target_weight, config.label_smoothing)
        return logits, costs.sum() / lengths.sum().clamp(min=1)

    def decode(self, model, input_ids, attention_mask, options, forced_lengths=None) -> Hypotheses:
        """Length candidates -> one pass on each (the blank allowed) -> the best mean log-probability over the
        candidate's positions -> its blanks removed. `forced_lengths` fixes the number of positions (the output,
        without blanks, may be shorter)."""
        config = model.config
        length_beam = options["length_beam"]
        lengths, length_logits, context = self.plan_candidates(model, input_ids, attention_mask, length_beam,
                                                               options["max_length"], forced_lengths)
        target_len = max(int(lengths.max()), 1)
        valid = torch.arange(target_len, device=lengths.device)[None, :] < lengths[:, None]  # [rows, target_len]
        decoder_input_ids = torch.full(valid.shape, config.mask_token_id, device=lengths.device).masked_fill(
            ~valid, config.pad_token_id)
        hidden = model.model.decode(decoder_input_ids, valid, context,
                                    model.prepare_decoder_mask(lengths, target_len, context))
        with_scores = length_beam > 1 or options["return_dict_in_generate"]
        tokens, scores = predict_tokens(hidden, model.lm_head, self.excluded_ids(config), with_scores)
        state = DecodingState(tokens=tokens.masked_fill(~valid, config.pad_token_id),
                              scores=torch.where(valid, scores, 0.0), lengths=lengths, step=1)
        if length_logits is not None:  # the one check on values: raises rather than return garbage
            check_finite({"length logits": length_logits, "token scores": state.scores})
        tokens, best_lengths, best_scores = best_candidates(state, length_beam)
        tokens, out_lengths = remove_blanks(tokens, best_lengths, config.blank_token_id, config.pad_token_id)
        return Hypotheses(tokens=tokens, lengths=out_lengths, scores=best_scores)
