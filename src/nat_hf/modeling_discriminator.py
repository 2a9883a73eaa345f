"""The discriminator of adversarial NAT training (`nat_hf.adversarial`): a small Transformer that reads a source
sentence and a target sentence and scores the target as a real translation (a reference, or the distilled target
the generator trains on) or a generated one.

The target is given as token ids (references, or generated tokens in the discriminator's own update) or as a
distribution over the vocabulary per position (`target_probs`; the generator's straight-through Gumbel-softmax
sample, whose gradient then reaches the generator): its embedding is `target_probs @ embed_tokens.weight`, which
equals the embedding of the ids for one-hot rows. Source and target share one token embedding (the generator's
joint vocabulary); each has its own learned positions and a segment embedding, and a learned `<score>` vector in
front of both is read out by a linear layer (the [CLS] readout of BERT, Devlin et al., 2019).
"""

from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput


@strict
class NATDiscriminatorConfig(PreTrainedConfig):
    r"""
    Configuration of a [`NATDiscriminator`].

    Args:
        vocab_size (`int`, defaults to 8000):
            Rows of the token embedding: the generator's vocabulary size (`NATConfig.vocab_size`).
        d_model (`int`, defaults to 256):
            Width of every hidden state.
        layers (`int`, defaults to 2):
            Transformer encoder layers over `<score>` + source + target.
        attention_heads (`int`, defaults to 4):
            Attention heads per layer; must divide `d_model`.
        ffn_dim (`int`, defaults to 1024):
            Inner width of the feed-forward blocks.
        dropout (`float`, defaults to 0.1):
            Dropout on embeddings, attention and sub-layer outputs.
        max_source_positions (`int`, defaults to 256):
            Longest source (tokens, end-of-sentence included) it reads.
        max_target_positions (`int`, defaults to 256):
            Longest target (tokens, end-of-sentence excluded) it reads.
        init_std (`float`, defaults to 0.02):
            Standard deviation of the normal initialisation of linear and embedding weights.
        pad_token_id (`int`, defaults to 0):
            Padding token of the source ids.
    """

    model_type = "nat_discriminator"

    vocab_size: int = 8000
    d_model: int = 256
    layers: int = 2
    attention_heads: int = 4
    ffn_dim: int = 1024
    dropout: float | int = 0.1
    max_source_positions: int = 256
    max_target_positions: int = 256
    init_std: float = 0.02
    pad_token_id: int | None = 0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name in ("vocab_size", "d_model", "layers", "ffn_dim", "max_source_positions", "max_target_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"NATDiscriminatorConfig: `{name}` must be >= 1, got {getattr(self, name)}")
        if self.attention_heads < 1 or self.d_model % self.attention_heads:
            raise ValueError(f"NATDiscriminatorConfig: `attention_heads` ({self.attention_heads}) must be >= 1 and "
                             f"divide `d_model` ({self.d_model})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"NATDiscriminatorConfig: `dropout` must be in [0, 1), got {self.dropout}")


@dataclass
class NATDiscriminatorOutput(ModelOutput):
    """`logits` `[batch]`: the score of each target being real (a logit: > 0 means "real")."""

    logits: torch.Tensor | None = None


class NATDiscriminator(PreTrainedModel):
    """Scores (source, target) pairs as real (> 0) or generated; see the module docstring."""

    config_class = NATDiscriminatorConfig
    base_model_prefix = "discriminator"
    main_input_name = "input_ids"
    _supports_sdpa = True

    def __init__(self, config: NATDiscriminatorConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.source_positions = nn.Embedding(config.max_source_positions, config.d_model)
        self.target_positions = nn.Embedding(config.max_target_positions, config.d_model)
        self.segments = nn.Embedding(2, config.d_model)  # 0: source, 1: target
        self.score_vector = nn.Parameter(torch.zeros(1, 1, config.d_model))
        layer = nn.TransformerEncoderLayer(config.d_model, config.attention_heads, config.ffn_dim, config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        # enable_nested_tensor=False: the nested-tensor fast path skips padded rows differently in eval and train
        self.layers = nn.TransformerEncoder(layer, config.layers, norm=nn.LayerNorm(config.d_model),
                                            enable_nested_tensor=False)
        self.dropout = nn.Dropout(config.dropout)
        self.score = nn.Linear(config.d_model, 1)
        self.post_init()

    def _init_weights(self, module):
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, NATDiscriminator):
            nn.init.normal_(module.score_vector, std=std)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        target_ids: torch.Tensor | None = None,
        target_probs: torch.Tensor | None = None,
        target_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> NATDiscriminatorOutput | tuple:
        """Score each target.

        Args:
            input_ids: `[batch, source_len]` source ids, right-padded.
            attention_mask: `[batch, source_len]`, 1 on real source tokens.
            target_ids: `[batch, target_len]` target ids (no end-of-sentence), or
            target_probs: `[batch, target_len, vocab]` a distribution (or a straight-through one-hot) per position.
            target_mask: `[batch, target_len]`, 1 on real target positions (default: all).

        Returns:
            `NATDiscriminatorOutput` with `logits` `[batch]`.
        """
        if (target_ids is None) == (target_probs is None):
            raise ValueError("pass exactly one of target_ids and target_probs")
        config = self.config
        source_len = input_ids.shape[1]
        if target_probs is not None:
            if target_probs.dim() != 3 or target_probs.shape[-1] != config.vocab_size:
                raise ValueError(f"target_probs must be [batch, target_len, {config.vocab_size}], got "
                                 f"{tuple(target_probs.shape)}")
            target_shape = target_probs.shape[:2]
            target_embeds = target_probs.to(self.embed_tokens.weight.dtype) @ self.embed_tokens.weight
        else:
            target_shape = target_ids.shape
            target_embeds = None
        if target_mask is None:
            target_mask = torch.ones(target_shape, dtype=torch.bool, device=input_ids.device)
        source_mask, target_mask = attention_mask.bool(), target_mask.bool()
        if target_ids is not None:
            ids = target_ids.masked_fill(~target_mask, config.pad_token_id or 0)
            if ((ids < 0) | (ids >= config.vocab_size)).any():
                raise ValueError(f"target_ids hold ids outside the vocabulary [0, {config.vocab_size})")
            target_embeds = self.embed_tokens(ids)
        target_len = target_shape[1]
        if source_len > config.max_source_positions or target_len > config.max_target_positions:
            raise ValueError(f"source length {source_len} / target length {target_len} exceed the discriminator's "
                             f"max_source_positions / max_target_positions ({config.max_source_positions}, "
                             f"{config.max_target_positions})")
        device = input_ids.device
        source = (self.embed_tokens(input_ids.masked_fill(~source_mask, config.pad_token_id or 0))
                  + self.source_positions(torch.arange(source_len, device=device)) + self.segments.weight[0])
        target = (target_embeds + self.target_positions(torch.arange(target_len, device=device))
                  + self.segments.weight[1])
        batch = source.shape[0]
        states = torch.cat([self.score_vector.expand(batch, 1, -1), source, target], dim=1)
        keep = torch.cat([source_mask.new_ones(batch, 1), source_mask, target_mask], dim=1)
        states = self.layers(self.dropout(states), src_key_padding_mask=~keep)
        logits = self.score(states[:, 0]).squeeze(-1)
        output = NATDiscriminatorOutput(logits=logits)
        return output if return_dict is not False else output.to_tuple()


__all__ = ["NATDiscriminator", "NATDiscriminatorConfig", "NATDiscriminatorOutput"]
