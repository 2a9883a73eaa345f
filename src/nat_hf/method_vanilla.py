"""The `vanilla` method: one-pass NAT (Gu et al., 2018, "Non-Autoregressive Neural Machine Translation").

Every target position is predicted at once from `<mask>` inputs (or from copied source embeddings when
`decoder_input_mode="copy"`); cross-entropy over all target tokens, plus the length loss. Decoding is CMLM's
(length candidates, Mask-Predict passes, best candidate) with the same options; a `copy` decoder allows one pass
only (`num_iterations > 1` raises ValueError naming it).
"""

import torch

from .method_base import NoOptions, masked_token_loss
from .method_cmlm import CMLMMethod


class VanillaMethod(CMLMMethod):
    """Vanilla one-pass NAT: the loss on every target position; both decoder input modes."""

    name = "vanilla"
    summary = ("one-pass non-autoregressive translation: a length predictor, then every target token predicted in "
               "parallel")
    paper = 'Gu et al., 2018, "Non-Autoregressive Neural Machine Translation"'
    TrainingOptions = NoOptions  # every position is masked: CMLM's masking options do not apply

    def validate_config(self, config) -> None:
        """Both `decoder_input_mode`s suit vanilla training."""

    def token_loss(self, model, context, target, target_mask, step=None) -> tuple[torch.Tensor, torch.Tensor]:
        decoder_input_ids = target.masked_fill(target_mask, model.config.mask_token_id)
        logits = model.decoder_logits(decoder_input_ids, target_mask, context)
        return logits, masked_token_loss(logits, target, target_mask, model.config.label_smoothing)
