"""The `glat` method: glancing training (Qian et al., 2021, "Glancing Transformer for Non-Autoregressive Neural
Machine Translation"), and the glancing pieces that `ctc` and `dag` compose with.

Training runs the decoder twice. The first pass, without gradient, predicts every position from the usual inputs;
its Hamming distance d to the reference (positions predicted wrong) sets how many reference tokens the second pass
sees: `round(ratio x d)` positions, chosen uniformly at random, get the reference token as decoder input. The loss
of the second pass counts the positions that were not revealed. The ratio decays linearly from
`glancing_ratio_start` to `glancing_ratio_end` over `glancing_anneal_steps` training steps. A model that already
predicts well sees few hints, one that predicts badly sees many: a curriculum from conditional to fully parallel
prediction. Glancing runs in training mode only: in eval mode (a validation loss) the loss is vanilla's one-pass
loss. Decoding is one pass (no hint): vanilla's length candidates and decoder.

`ctc` and `dag` reuse `GlancingOptions` and `glancing_reveal` on their best alignment / best path, where the
"reference per decoder position" comes from the alignment (method_ctc.py, method_dag.py).
"""

import numbers
from dataclasses import dataclass, field

import torch

from .method_base import check_integer, lowest_scoring_positions, masked_token_loss, predict_tokens, special_token_ids
from .method_cmlm import MaskPredictOptions
from .method_vanilla import VanillaMethod


def _check_ratio(name: str, value) -> float:
    """`value` as a float, or ValueError naming the option unless it is a real number (not a bool) in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0.0 <= value <= 1.0):
        raise ValueError(f"NATConfig: method_options `{name}` must be a number in [0, 1], got {value!r}")
    return float(value)


@dataclass
class GlancingOptions:
    """The glancing schedule (in `NATConfig.method_options`). A start ratio of 0 turns glancing off."""

    glancing_ratio_start: float = 0.0  # share of the first pass's wrong positions revealed, at step 0
    glancing_ratio_end: float | None = None  # ratio after `glancing_anneal_steps` (None: the start ratio)
    glancing_anneal_steps: int = 0  # linear decay length in training steps (0: constant start ratio)

    def validate(self, config=None) -> None:
        """ValueError naming the option."""
        self.glancing_ratio_start = _check_ratio("glancing_ratio_start", self.glancing_ratio_start)
        if self.glancing_ratio_end is not None:
            self.glancing_ratio_end = _check_ratio("glancing_ratio_end", self.glancing_ratio_end)
        try:
            self.glancing_anneal_steps = check_integer("glancing_anneal_steps", self.glancing_anneal_steps, 0)
        except ValueError as error:
            raise ValueError(f"NATConfig: method_options {error}") from None

    def loss_ratio(self, training: bool, step: int | None) -> float:
        """The ratio a loss uses: the schedule's in training mode, 0 in eval mode (a validation loss is the
        one-pass loss that decoding matches)."""
        return self.glancing_ratio(step) if training else 0.0

    def glancing_ratio(self, step: int | None) -> float:
        """The ratio at training step `step`. `None` (a caller that does not count steps, e.g. transformers'
        Trainer) gives the start ratio."""
        end = self.glancing_ratio_start if self.glancing_ratio_end is None else self.glancing_ratio_end
        if step is None or self.glancing_anneal_steps == 0:
            return self.glancing_ratio_start
        progress = min(max(step, 0) / self.glancing_anneal_steps, 1.0)
        return self.glancing_ratio_start + (end - self.glancing_ratio_start) * progress


def glancing_counts(mismatches: torch.Tensor, ratio: float) -> torch.Tensor:
    """How many positions each row reveals: `floor(ratio x d + 0.5)`, d the row's count of `mismatches`
    (`[rows, positions]` bool) -> `[rows]` long.

    Computed in float64 (float32 on MPS, which has no float64) so that the count is the one Python's
    `math.floor(ratio * d + 0.5)` gives: float32 rounding can move `ratio x d` across a half."""
    dtype = torch.float32 if mismatches.device.type == "mps" else torch.float64
    return torch.floor(mismatches.sum(-1).to(dtype) * ratio + 0.5).long()


def glancing_reveal(mismatches: torch.Tensor, candidates: torch.Tensor, ratio: float) -> torch.Tensor:
    """Choose the positions whose reference is revealed to the second pass.

    Args:
        mismatches: `[rows, positions]` bool, where the first pass was wrong (inside `candidates`).
        candidates: `[rows, positions]` bool, the positions that may be revealed (real target positions).
        ratio: the glancing ratio in [0, 1].

    Returns:
        `[rows, positions]` bool: `glancing_counts(mismatches, ratio)` positions per row, uniformly at random
        among `candidates` (torch's global RNG), never more than the row has.
    """
    counts = torch.minimum(glancing_counts(mismatches & candidates, ratio), candidates.sum(-1))
    random_scores = torch.rand(candidates.shape, device=candidates.device)
    return lowest_scoring_positions(random_scores, candidates, counts)


@dataclass
class GLATTrainingOptions(GlancingOptions):
    """GLAT's schedule: 0.5 decaying to 0.3 (Qian et al., 2021 anneal 0.5 -> 0.3)."""

    glancing_ratio_start: float = 0.5
    glancing_ratio_end: float | None = 0.3
    glancing_anneal_steps: int = 20000


@dataclass
class OnePassOptions(MaskPredictOptions):
    """Vanilla's decoding options with one-pass defaults (GLAT is trained to decode in one pass)."""

    num_iterations: int = field(default=1, metadata={"help": "Mask-Predict passes (NAT; default: the model's)"})
    length_beam: int = field(default=1, metadata={"help": "length candidates per sentence (NAT; default: the "
                                                          "model's)"})


class GLATMethod(VanillaMethod):
    """Vanilla one-pass NAT trained with glancing (both decoder input modes); decodes in one pass by default."""

    name = "glat"
    summary = ("glancing training (the decoder sees some reference tokens, fewer as it gets better) and one-pass "
               "decoding with a length predictor")
    paper = 'Qian et al., 2021, "Glancing Transformer for Non-Autoregressive Neural Machine Translation"'
    Options = OnePassOptions
    TrainingOptions = GLATTrainingOptions

    def token_loss(self, model, context, target, target_mask, step=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Glancing training (Qian et al., 2021): a no-grad first pass from the usual inputs; `round(ratio x d)`
        reference tokens (d: its wrong positions) revealed at random target positions as decoder inputs of the
        second pass; the loss on the positions that were not revealed. Glancing runs in training mode only: in
        eval mode (a validation loss) the loss is the one-pass loss of the decoding task, every position counted.

        Args:
            target: `[batch, target_len]` reference ids; `target_mask` its bool mask.
            step: the training step of the ratio schedule (None: the start ratio).

        Returns:
            The second pass's logits `[batch, target_len, vocab]` and the token loss `[]`.
        """
        config = model.config
        ratio = self.training_options(config).loss_ratio(model.training, step)
        decoder_input_ids = target.masked_fill(target_mask, config.mask_token_id)
        revealed = torch.zeros_like(target_mask)
        if ratio > 0:
            with torch.no_grad():
                hidden = model.model.decode(decoder_input_ids, target_mask, context)
                predicted, _ = predict_tokens(hidden, model.lm_head, special_token_ids(config), with_scores=False)
            revealed = glancing_reveal((predicted != target) & target_mask, target_mask, ratio)
            decoder_input_ids = torch.where(revealed, target, decoder_input_ids)
        logits = model.decoder_logits(decoder_input_ids, target_mask, context)
        return logits, masked_token_loss(logits, target, target_mask & ~revealed, config.label_smoothing)
