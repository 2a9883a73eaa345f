"""Decoding strategies of NAT models, apart from the model: the model exposes one refinement step
(`NATForConditionalGeneration.refine`), a strategy runs the loop and carries an explicit `DecodingState`.

Every strategy has the signature `strategy(model, context, lengths, num_iterations, final_scores) -> DecodingState`
and is chosen through `DECODING_STRATEGIES`. Candidate lengths and the final choice among them are shared helpers.
"""

from dataclasses import dataclass

import torch
from torch import nn

# Largest float32 logits buffer `[positions, vocab]` that one refinement pass materialises: the output projection
# runs over chunks of positions so that peak memory does not grow with batch x length_beam x length x vocabulary.
# A chunk holds at least one position (a vocabulary over the budget still works, one position at a time).
LOGITS_BUDGET_BYTES = 64 * 2**20


class NonFiniteScoresError(FloatingPointError):
    """Decoding met NaN or infinite logits: the translations would be garbage (typically NaN weights from a
    diverged training run, or a float16 overflow)."""


@dataclass
class DecodingState:
    """The hypotheses being refined, one row per (sentence, length candidate)."""

    tokens: torch.Tensor  # [rows, target_len] current tokens; pad beyond each row's length
    scores: torch.Tensor  # [rows, target_len] log-probability of each current token; 0 beyond the length
    lengths: torch.Tensor  # [rows] target length of each row
    step: int = 0  # decoder passes done so far

    @property
    def valid(self) -> torch.Tensor:
        """`[rows, target_len]` bool, `True` on positions inside each row's length."""
        positions = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        return positions[None, :] < self.lengths[:, None]


def lowest_scoring_positions(scores: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mark, in each row, the `counts[row]` valid positions with the lowest scores (ties: leftmost first).

    Args:
        scores: `[rows, length]` float.
        valid: `[rows, length]` bool; invalid positions are never chosen.
        counts: `[rows]` long, how many positions to mark (at most the row's number of valid positions).

    Returns:
        `[rows, length]` bool.
    """
    ordered = scores.masked_fill(~valid, float("inf")).sort(dim=-1, stable=True).indices  # [rows, length]
    rank = torch.empty_like(ordered).scatter_(
        -1, ordered, torch.arange(ordered.shape[-1], device=ordered.device).expand_as(ordered)
    )  # rank[row, position] = place of the position in ascending score order
    return (rank < counts[:, None]) & valid


def mask_predict(model, context, lengths: torch.Tensor, num_iterations: int, final_scores: bool = True
                 ) -> DecodingState:
    """Mask-Predict (Ghazvininejad et al., 2019, "Mask-Predict: Parallel Decoding of Conditional Masked
    Language Models").

    Pass 0 predicts every position from `<mask>` inputs. Pass t = 1 .. T-1 (T = `num_iterations`) re-masks the
    `floor(L * (T - t) / T)` lowest-probability tokens of each hypothesis of length L and predicts them again,
    keeping the other tokens and their probabilities. `num_iterations=1` is one-pass parallel decoding.
    The loop makes no host synchronisation.

    Args:
        model: a `NATForConditionalGeneration`.
        context: its `NATEncoderContext`, one row per hypothesis.
        lengths: `[rows]` long, the target length of each hypothesis.
        num_iterations: decoder passes, >= 1.
        final_scores: whether the last pass must score its tokens (False: their scores are 0; the caller reads
            neither `state.scores` nor a ranking of the hypotheses).
    """
    config = model.config
    target_len = max(int(lengths.max()), 1)  # the one host sync: the shape of the hypotheses
    positions = torch.arange(target_len, device=lengths.device)
    valid = positions[None, :] < lengths[:, None]  # [rows, target_len]
    tokens = torch.full(valid.shape, config.mask_token_id, device=lengths.device).masked_fill(
        ~valid, config.pad_token_id
    )
    state = DecodingState(tokens=tokens, scores=torch.zeros(valid.shape, device=lengths.device), lengths=lengths)
    decoder_mask = model.prepare_decoder_mask(lengths, target_len, context)
    for step in range(num_iterations):
        if step == 0:
            remask, max_masked = valid, None
        else:
            num_masked = lengths * (num_iterations - step) // num_iterations  # [rows], linear decay
            remask = lowest_scoring_positions(state.scores, valid, num_masked)
            max_masked = target_len * (num_iterations - step) // num_iterations  # bound on num_masked, host side
        last = step == num_iterations - 1
        state = model.refine(state, remask, decoder_mask, context, max_masked, with_scores=final_scores or not last)
    return state


DECODING_STRATEGIES = {
    "mask_predict": mask_predict,
}


def predict_tokens(
    hidden: torch.Tensor,
    output_layer: nn.Linear,
    special_ids: list[int],
    with_scores: bool = True,
    budget_bytes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Most probable token (special tokens excluded) at each position and its log-probability under the full
    distribution, computed over chunks of positions so that the float32 logits never exceed `budget_bytes`
    (default `LOGITS_BUDGET_BYTES`; logsumexp adds a temporary of the same size). The result does not depend on
    the chunking.

    Args:
        hidden: `[..., d_model]` decoder states.
        output_layer: the output projection `d_model -> vocab`.
        special_ids: token ids never predicted.
        with_scores: False skips the normalisation over the vocabulary: the scores are then 0, or NaN where the
            chosen logit is not finite, so that `check_finite` still catches a broken model.
        budget_bytes: bound on one chunk's float32 logits.

    Returns:
        tokens (long) and scores (float32), both of shape `hidden.shape[:-1]`.
    """
    budget = LOGITS_BUDGET_BYTES if budget_bytes is None else budget_bytes
    flat = hidden.reshape(-1, hidden.shape[-1])
    chunk = max(1, budget // (4 * output_layer.weight.shape[0]))  # positions per chunk
    tokens, scores = [], []
    for start in range(0, max(flat.shape[0], 1), chunk):  # an empty input still makes one (empty) chunk
        logits = output_layer(flat[start : start + chunk]).float()  # [chunk, vocab]
        log_normalizer = logits.logsumexp(-1) if with_scores else None  # no log_softmax copy of the logits
        logits[:, special_ids] = float("-inf")
        best_logits, best = logits.max(-1)
        del logits
        tokens.append(best)
        scores.append(best_logits - log_normalizer if with_scores else best_logits * 0)
    if len(tokens) == 1:
        return tokens[0].view(hidden.shape[:-1]), scores[0].view(hidden.shape[:-1])
    return torch.cat(tokens).view(hidden.shape[:-1]), torch.cat(scores).view(hidden.shape[:-1])


def check_finite(length_logits: torch.Tensor, scores: torch.Tensor) -> None:
    """Raise `NonFiniteScoresError` if the length logits or the token scores hold NaN or inf.

    One host synchronisation, made once per `generate` call after the last pass: NaN logits give arbitrary tokens
    (often end-of-sentence-only or empty strings) that must not pass for translations."""
    finite = torch.stack([torch.isfinite(length_logits).all(), torch.isfinite(scores).all()]).tolist()
    if not all(finite):
        where = " and ".join(name for name, ok in zip(("length logits", "token scores"), finite, strict=True) if not ok)
        raise NonFiniteScoresError(
            f"generate produced non-finite (NaN or inf) {where}: the model's weights or activations are not finite "
            "(a diverged training run, or an overflow in float16); its output would be garbage, so none is returned"
        )


def length_candidates(
    length_logits: torch.Tensor,
    source_lengths: torch.Tensor,
    empty_source: torch.Tensor,
    config,
    length_beam: int,
    max_length: int,
) -> torch.Tensor:
    """The `length_beam` most probable target lengths of each sentence.

    Args:
        length_logits: `[batch, num_length_classes]`.
        source_lengths: `[batch]` source tokens per sentence, end-of-sentence included.
        empty_source: `[batch]` bool, sources with no token besides end-of-sentence: their length is 0.
        config: the `NATConfig` (length prediction mode).
        length_beam: candidates per sentence.
        max_length: longest target allowed.

    Returns:
        `[batch, length_beam]` long. A non-empty source gets lengths in `[1, max_length]` (0 when `max_length`
        is 0: the output cap leaves room for end-of-sentence only).
    """
    classes = length_logits.topk(length_beam, dim=-1).indices  # [batch, length_beam]
    if config.length_prediction_mode == "offset":
        lengths = source_lengths[:, None] + classes - config.max_length_offset
    else:
        lengths = classes
    lengths = lengths.clamp(min=min(1, max_length), max=max_length)
    return lengths.masked_fill(empty_source[:, None], 0)


def best_candidates(state: DecodingState, length_beam: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick, for each sentence, the hypothesis with the highest mean token log-probability.

    Returns:
        tokens `[batch, target_len]`, lengths `[batch]`, scores `[batch]` (mean log-probability; 0 for an empty
        hypothesis).
    """
    rows, target_len = state.tokens.shape
    mean_scores = state.scores.sum(-1) / state.lengths.clamp(min=1)  # [rows]
    mean_scores = mean_scores.view(-1, length_beam)  # [batch, length_beam]
    best = mean_scores.argmax(-1)  # [batch]; first maximum on ties
    chosen = torch.arange(best.shape[0], device=best.device) * length_beam + best  # [batch] row indices
    return state.tokens[chosen], state.lengths[chosen], mean_scores.gather(-1, best[:, None]).squeeze(-1)


def finish_sequences(tokens: torch.Tensor, lengths: torch.Tensor, eos_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Append end-of-sentence after each sequence and pad the rest: `[batch, L]` -> `[batch, max(lengths) + 1]`."""
    width = int(lengths.max()) + 1
    positions = torch.arange(width, device=tokens.device)[None, :]
    padded = torch.full((tokens.shape[0], width), pad_token_id, dtype=tokens.dtype, device=tokens.device)
    copy_width = min(width, tokens.shape[1])
    padded[:, :copy_width] = tokens[:, :copy_width]
    padded = padded.masked_fill(positions >= lengths[:, None], pad_token_id)
    return padded.masked_fill(positions == lengths[:, None], eos_token_id)
