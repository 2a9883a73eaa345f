"""Training objectives of NAT models: one function each, chosen by `NATConfig.objective` through `OBJECTIVES`.

Every objective has the signature `objective(model, target, target_mask, context) -> ObjectiveOutput`:

- `model`: the `NATForConditionalGeneration` being trained (the objective calls `model.decoder_logits`);
- `target`: `[batch, target_len]` target token ids without end-of-sentence, right-padded with `pad_token_id`;
- `target_mask`: `[batch, target_len]` bool, `True` on real target tokens;
- `context`: the `NATEncoderContext` of the batch (encoder states, source ids and masks).

The length loss is added by the model, not by the objective. Adding an objective means one function here and
one row in `OBJECTIVES`.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .decoding import lowest_scoring_positions


@dataclass
class ObjectiveOutput:
    """What an objective returns: the decoder logits it trained on and the token loss (a scalar)."""

    logits: torch.Tensor  # [batch, target_len, vocab]
    loss: torch.Tensor  # []


def masked_token_loss(
    logits: torch.Tensor, target: torch.Tensor, selected: torch.Tensor, label_smoothing: float
) -> torch.Tensor:
    """Label-smoothed cross-entropy averaged over the selected positions.

    Args:
        logits: `[batch, target_len, vocab]`.
        target: `[batch, target_len]` gold token ids.
        selected: `[batch, target_len]` bool, the positions that count.
        label_smoothing: epsilon of the smoothing.

    Returns:
        A scalar; 0 (with a gradient path) when nothing is selected.
    """
    per_token = F.cross_entropy(
        logits.transpose(1, 2), target, reduction="none", label_smoothing=label_smoothing
    )  # [batch, target_len]
    count = selected.sum().clamp(min=1)
    return (per_token * selected).sum() / count


def sample_cmlm_mask(target_mask: torch.Tensor) -> torch.Tensor:
    """Choose the target positions to mask for CMLM training.

    Per sentence of length L >= 1, the number of masked tokens is uniform in {1, ..., L} and the masked positions
    are a uniformly random subset of that size (Ghazvininejad et al., 2019). Uses torch's global RNG.

    Args:
        target_mask: `[batch, target_len]` bool, `True` on real target tokens.

    Returns:
        `[batch, target_len]` bool, `True` where the decoder input is replaced by `<mask>`.
    """
    lengths = target_mask.sum(-1)  # [batch]
    uniform = torch.rand(lengths.shape, device=target_mask.device)
    num_masked = torch.minimum((lengths * uniform).long() + 1, lengths)  # [batch], in {1..L}, 0 when L = 0
    random_scores = torch.rand(target_mask.shape, device=target_mask.device)
    return lowest_scoring_positions(random_scores, target_mask, num_masked)


def cmlm_objective(model, target, target_mask, context) -> ObjectiveOutput:
    """Conditional masked language model (Ghazvininejad et al., 2019, "Mask-Predict: Parallel Decoding of
    Conditional Masked Language Models").

    A random number of target tokens is replaced by `<mask>`; the decoder sees the rest and is trained with
    label-smoothed cross-entropy on the masked positions only.
    """
    masked = sample_cmlm_mask(target_mask)  # [batch, target_len]
    decoder_input_ids = target.masked_fill(masked, model.config.mask_token_id)
    logits = model.decoder_logits(decoder_input_ids, target_mask, context)
    loss = masked_token_loss(logits, target, masked, model.config.label_smoothing)
    return ObjectiveOutput(logits=logits, loss=loss)


def vanilla_objective(model, target, target_mask, context) -> ObjectiveOutput:
    """Vanilla one-pass NAT (Gu et al., 2018, "Non-Autoregressive Neural Machine Translation").

    Every target position is predicted at once from `<mask>` inputs (or from copied source embeddings when
    `decoder_input_mode="copy"`); cross-entropy over all target tokens.
    """
    decoder_input_ids = target.masked_fill(target_mask, model.config.mask_token_id)
    logits = model.decoder_logits(decoder_input_ids, target_mask, context)
    loss = masked_token_loss(logits, target, target_mask, model.config.label_smoothing)
    return ObjectiveOutput(logits=logits, loss=loss)


OBJECTIVES = {
    "cmlm": cmlm_objective,
    "vanilla": vanilla_objective,
}
