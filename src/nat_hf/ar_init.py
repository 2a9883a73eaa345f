"""Initialise a NAT model from an autoregressive (AR) encoder-decoder: "auto-regressive weak supervision" through
the weights (e.g. Guo et al., 2020, "Fine-Tuning by Curriculum Learning for Non-Autoregressive Neural Machine
Translation", which starts the NAT from a trained AR model).

Marian- and BART-style checkpoints (`model.shared`, `model.encoder.layers.N.self_attn.q_proj`, `fc1`, ...) map
name by name onto `NATForConditionalGeneration`; a tensor is copied only when its shape matches. The decoder's
self-attention is copied too: the NAT decoder uses it without the causal mask. What has no AR counterpart (the
heads of the NAT method: a length predictor, a DAG link scorer; learned positions) keeps its fresh initialisation,
and the report says so.

The NAT vocabulary may extend the AR model's: a method that needs a token the teacher has none of (CTC's blank)
appends it as the last row(s), e.g. an 8000-token teacher and an 8001-token NAT with `blank_token_id=8000`. The
vocabulary tensors (embeddings, an untied output projection) then get the AR rows `[:ar_vocab]`, the extra rows keep
their initialisation, and the report lists them (`new_rows`). A NAT vocabulary smaller than the AR model's is a
ValueError: the token ids would not mean the same.
"""

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

# AR (Marian/BART) parameter name -> NAT parameter name. Layer-norm and attention names are the same in both.
NAME_RULES = [
    (r"^model\.shared\.weight$", "model.shared.weight"),
    (r"^model\.encoder\.embed_tokens\.weight$", "model.source_embed_tokens.weight"),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.fc([12])\.(weight|bias)$", r"model.\1.layers.\2.ffn.fc\3.\4"),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.((self_attn|encoder_attn)(_layer_norm)?|final_layer_norm)"
     r"(\.[qkvo]\w*_proj)?\.(weight|bias)$", r"model.\1.layers.\2.\3\6.\7"),
    (r"^model\.(encoder|decoder)\.layer_norm\.(weight|bias)$", r"model.\1.layer_norm.\2"),
    (r"^model\.(encoder|decoder)\.embed_positions\.weight$", r"model.\1.embed_positions.weight"),
    (r"^lm_head\.weight$", "lm_head.weight"),  # the output projection (when the NAT's is not tied)
]
# NAT tensors with one row per vocabulary entry
VOCABULARY_TENSORS = ("model.shared.weight", "model.source_embed_tokens.weight", "lm_head.weight")


@dataclass
class InitReport:
    """What `init_from_ar` did, name by name."""

    ar_model: str
    copied: list[str] = field(default_factory=list)  # NAT parameters now equal to their AR counterpart
    shape_mismatch: list[str] = field(default_factory=list)  # "nat_name: nat_shape vs ar_shape", left as initialised
    newly_initialised: list[str] = field(default_factory=list)  # NAT parameters with no AR counterpart
    ar_unused: list[str] = field(default_factory=list)  # AR tensors with no NAT counterpart
    # token ids of the NAT vocabulary beyond the AR model's (e.g. an appended blank): their rows of the copied
    # vocabulary tensors keep their initialisation
    new_rows: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        rows = f", vocabulary rows {self.new_rows} newly initialised (not in the AR vocabulary)" \
            if self.new_rows else ""
        return (f"initialised from {self.ar_model}: {len(self.copied)} tensors copied, {len(self.shape_mismatch)} "
                f"shape mismatches, {len(self.newly_initialised)} NAT tensors newly initialised "
                f"({', '.join(self.newly_initialised) or 'none'}){rows}, {len(self.ar_unused)} AR tensors unused "
                f"({', '.join(self.ar_unused) or 'none'})")


def nat_name(ar_name: str) -> str | None:
    """The NAT parameter an AR parameter maps to, or None."""
    for pattern, replacement in NAME_RULES:
        if re.match(pattern, ar_name):
            return re.sub(pattern, replacement, ar_name)
    return None


@torch.no_grad()
def init_from_ar(nat_model, ar_model) -> InitReport:
    """Copy every AR tensor whose mapped NAT name exists with the same shape into `nat_model` (in place); the
    vocabulary tensors (`[vocab, d_model]`) also when the NAT vocabulary appends rows (their first `ar_vocab` rows).

    Args:
        nat_model: a `NATForConditionalGeneration` (any method; its heads have no AR counterpart).
        ar_model: a loaded AR encoder-decoder (e.g. `MarianMTModel`), or a path to one.

    Returns:
        The `InitReport`: copied, mismatched and newly initialised tensors, unused AR tensors, and `new_rows`.

    Raises:
        ValueError: the NAT vocabulary is smaller than the AR model's (both sizes named).
    """
    if isinstance(ar_model, (str, Path)):
        from transformers import AutoModelForSeq2SeqLM

        name = str(ar_model)
        ar_model = AutoModelForSeq2SeqLM.from_pretrained(ar_model)
    else:
        name = getattr(ar_model.config, "_name_or_path", "") or type(ar_model).__name__
    report = InitReport(ar_model=name)
    nat_state = nat_model.state_dict()
    tied = bool(getattr(nat_model.config, "tie_word_embeddings", False))
    # e.g. lm_head.weight, tied to the embeddings: filled with its source
    tied_targets = set((nat_model._tied_weights_keys or {}).keys()) if tied else set()
    filled, seen_storage = set(), set()
    for ar_name, tensor in ar_model.state_dict().items():
        alias = tensor.data_ptr() in seen_storage  # tied/shared AR tensors appear under several names
        seen_storage.add(tensor.data_ptr())
        target = nat_name(ar_name)
        if target is None or target not in nat_state or target in tied_targets:
            if not alias:
                report.ar_unused.append(ar_name)
            continue
        destination = nat_state[target]
        if target.endswith("embed_positions.weight") and tensor.shape[0] >= destination.shape[0] \
                and tensor.shape[1:] == destination.shape[1:]:
            tensor = tensor[: destination.shape[0]]  # positions: the first max_*_positions rows
        rows = slice(None)
        if target in VOCABULARY_TENSORS and tensor.dim() == 2 and tensor.shape[1:] == destination.shape[1:]:
            nat_rows, ar_rows = destination.shape[0], tensor.shape[0]
            if nat_rows < ar_rows:
                raise ValueError(f"the NAT vocabulary ({nat_rows} tokens) is smaller than the AR model's ({ar_rows} "
                                 f"tokens, {ar_name}): initialising from it needs the same token ids, and the NAT "
                                 "vocabulary may only append tokens (e.g. a blank) after the AR model's")
            if nat_rows > ar_rows:
                rows = slice(0, ar_rows)  # the AR rows; the appended ones keep their initialisation
                report.new_rows = list(range(ar_rows, nat_rows))
        if destination[rows].shape != tensor.shape:
            report.shape_mismatch.append(f"{target}: {tuple(destination.shape)} vs {tuple(tensor.shape)}")
            continue
        destination[rows].copy_(tensor)
        report.copied.append(target)
        filled.add(target)
    mismatched = {entry.split(":")[0] for entry in report.shape_mismatch}
    report.newly_initialised = [name for name in nat_state
                                if name not in filled | tied_targets | mismatched]
    return report
