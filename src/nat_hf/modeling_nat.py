"""Non-autoregressive Transformer for translation: the backbone (embeddings, encoder, a decoder that predicts every
target position in parallel, output projection) behind a *method* (`config.objective`, a row of
`methods.METHODS`).

The decoder attends bidirectionally over the target positions; its input is `<mask>` embeddings (plus the tokens
already decided, for iterative refinement) or, in `"copy"` mode, source embeddings copied onto the target
positions. The method owns the rest: its heads (e.g. the length predictor), its loss (`forward` with `labels`
delegates to it) and its decoding and options (`generate` delegates to it). See `method_base.py`.
"""

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithCrossAttentions
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_nat import NATConfig
from .method_base import NATMethod, check_integer, finish_sequences
from .methods import METHODS, decoding_option_help

# The translation pipeline saved beside every model, so `pipeline(model=..., trust_remote_code=True)` finds it.
PIPELINE_FILE = Path(__file__).with_name("pipeline_nat.py")
CUSTOM_PIPELINES = {
    "nat-translation": {"impl": "pipeline_nat.NATTranslationPipeline", "pt": ["AutoModelForSeq2SeqLM"], "tf": [],
                        "type": "text"},
}
# generate() arguments that callers such as Seq2SeqTrainer pass and that NAT decoding has no use for.
IGNORED_GENERATE_KWARGS = ("labels", "synced_gpus", "decoder_input_ids", "decoder_attention_mask")


@dataclass
class NATModelOutput(ModelOutput):
    """Output of [`NATModel`].

    Args:
        last_hidden_state: `[batch, target_len, d_model]` decoder output (`None` without decoder inputs).
        length_logits: `[batch, num_length_classes]` scores of the length predictor (methods with one).
        decoder_hidden_states: with `output_hidden_states`, `decoder_layers + 1` tensors `[batch, target_len,
            d_model]`: the decoder input (embeddings + positions) and each layer's output (the last one after the
            final LayerNorm when pre-norm, i.e. `last_hidden_state`).
        decoder_attentions: with `output_attentions`, per decoder layer `[batch, heads, target_len, target_len]`
            self-attention weights.
        cross_attentions: with `output_attentions`, per decoder layer `[batch, heads, target_len, source_len]`.
        encoder_last_hidden_state: `[batch, source_len, d_model]` encoder output.
        encoder_hidden_states: with `output_hidden_states`, `encoder_layers + 1` tensors, as for the decoder.
        encoder_attentions: with `output_attentions`, per encoder layer `[batch, heads, source_len, source_len]`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    length_logits: torch.FloatTensor | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class NATSeq2SeqLMOutput(ModelOutput):
    """Output of [`NATForConditionalGeneration`].

    Args:
        loss: the method's total loss (with `labels`); for `cmlm`/`vanilla`
            `token_loss + config.length_loss_weight * length_loss`.
        logits: `[batch, target_len, vocab]` decoder logits: those the method trained on (with `labels`; None
            for `dag` in training mode, whose loss only keeps them in chunks) or those of the given
            `decoder_input_ids`.
        length_logits: `[batch, num_length_classes]` scores of the length predictor (methods with one).
        token_loss: the method's loss term named `token` (with `labels`).
        length_loss: the method's loss term named `length` (with `labels`; methods with a length predictor).
        loss_terms: every named term of the method's loss (with `labels`), e.g. `{"token": ..., "length": ...}`.
        loss_counts: events of the batch the training loop sums and logs (with `labels`), e.g.
            `{"skipped_targets": ...}` for targets that cannot fit an upsampled decoder (`ctc`, `dag`).
        decoder_hidden_states, decoder_attentions, cross_attentions, encoder_last_hidden_state,
        encoder_hidden_states, encoder_attentions: as in [`NATModelOutput`]; the decoder ones only with
            `decoder_input_ids` (with `labels` the decoder passes belong to the objective and are not returned).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    length_logits: torch.FloatTensor | None = None
    token_loss: torch.FloatTensor | None = None
    length_loss: torch.FloatTensor | None = None
    loss_terms: dict[str, torch.Tensor] | None = None
    loss_counts: dict[str, torch.Tensor] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class NATGenerateOutput(ModelOutput):
    """Output of `generate(..., return_dict_in_generate=True)`.

    Args:
        sequences: `[batch, max_len + 1]` token ids, each closed by end-of-sentence and right-padded.
        sequences_scores: `[batch]` mean token log-probability of each chosen hypothesis.
        lengths: `[batch]` number of tokens before end-of-sentence.
    """

    sequences: torch.LongTensor | None = None
    sequences_scores: torch.FloatTensor | None = None
    lengths: torch.LongTensor | None = None


@dataclass
class NATEncoderContext:
    """What the decoder needs from the encoder, computed once per batch and reused by every decoder pass."""

    hidden_states: torch.Tensor  # [rows, source_len, d_model]
    attention_mask: torch.Tensor  # [rows, source_len] bool
    input_ids: torch.Tensor | None  # [rows, source_len], read by decoder_input_mode="copy" (None: inputs_embeds)
    cross_attention_mask: torch.Tensor | None  # key-padding mask in the attention implementation's format
    cross_key_values: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer, [rows, heads, src, head]

    def repeat_rows(self, times: int) -> "NATEncoderContext":
        """Repeat each row `times` times in place (row i -> rows i*times .. i*times+times-1)."""
        def rep(tensor):
            return None if tensor is None else tensor.repeat_interleave(times, dim=0)

        key_values = None
        if self.cross_key_values is not None:
            key_values = [(rep(key), rep(value)) for key, value in self.cross_key_values]
        return NATEncoderContext(
            rep(self.hidden_states), rep(self.attention_mask), rep(self.input_ids), rep(self.cross_attention_mask),
            key_values,
        )


def sinusoidal_positions(num_positions: int, dim: int) -> torch.Tensor:
    """`[num_positions, dim]` fixed position encodings, sines in the first half and cosines in the second (the
    layout of Marian's), so that weights can be exchanged with Marian models."""
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    frequency = torch.pow(10000.0, -torch.arange(0, dim, 2, dtype=torch.float64) / dim)[None, :]
    return torch.cat([torch.sin(position * frequency), torch.cos(position * frequency)], dim=-1).float()


class NATPositionEmbedding(nn.Module):
    """Learned or sinusoidal position embeddings; `forward(length)` returns `[length, dim]`."""

    def __init__(self, num_positions: int, dim: int, sinusoidal: bool):
        super().__init__()
        self.sinusoidal = sinusoidal
        if sinusoidal:
            self.register_buffer("weight", sinusoidal_positions(num_positions, dim))
        else:
            self.weight = nn.Parameter(torch.empty(num_positions, dim))

    def forward(self, length: int) -> torch.Tensor:
        return self.weight[:length]


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain attention (`attn_implementation="eager"`): matmul, softmax, matmul. The only implementation that
    returns the attention weights (`output_attentions=True`).

    `query` `[rows, heads, q_len, head_dim]`, `key`/`value` `[rows, heads, k_len, head_dim]`; `attention_mask` is
    additive (as transformers builds it for eager; a bool mask, True = attend, is accepted too), broadcastable to
    `[rows, heads, q_len, k_len]`. Returns `[rows, q_len, heads, head_dim]` and the `[rows, heads, q_len, k_len]`
    weights. Softmax in float32 for half-precision inputs."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class NATAttention(nn.Module):
    """Multi-head attention without any causal mask, through the transformers attention interface (SDPA by
    default, `eager_attention_forward` for `"eager"`). Cross-attention keys and values can be computed once and
    passed back in (`key_value`). Returns the output and the attention weights: `None` unless the implementation
    is eager or `output_attentions=True`, which runs this call with `eager_attention_forward` (the other
    implementations compute no weights)."""

    def __init__(self, config: NATConfig, num_heads: int):
        super().__init__()
        self.config = config
        self.head_dim = config.d_model // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        # With no padding the prepared mask is None and SDPA would fall back to this flag: NAT attention is never
        # causal.
        self.is_causal = False
        self.q_proj = nn.Linear(config.d_model, config.d_model)
        self.k_proj = nn.Linear(config.d_model, config.d_model)
        self.v_proj = nn.Linear(config.d_model, config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.d_model)

    def key_value(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[rows, len, d_model]` -> keys and values, each `[rows, heads, len, head_dim]`."""
        shape = (*states.shape[:-1], -1, self.head_dim)
        return self.k_proj(states).view(shape).transpose(1, 2), self.v_proj(states).view(shape).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        key_value_states: torch.Tensor | None = None,
        key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows, length, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(rows, length, -1, self.head_dim).transpose(1, 2)
        if key_value is None:
            key_value = self.key_value(hidden_states if key_value_states is None else key_value_states)
        attention = eager_attention_forward if output_attentions else ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention(
            self, query, *key_value, attention_mask,
            dropout=self.dropout if self.training else 0.0, scaling=self.scaling,
        )  # [rows, length, heads, head_dim]
        return self.out_proj(output.reshape(rows, length, -1)), weights


class NATFeedForward(nn.Module):
    def __init__(self, config: NATConfig, ffn_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, config.d_model)
        self.activation = ACT2FN[config.activation_function]
        self.activation_dropout = config.activation_dropout

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.activation(self.fc1(hidden_states))
        hidden_states = F.dropout(hidden_states, p=self.activation_dropout, training=self.training)
        return self.fc2(hidden_states)


class NATResidualLayer(GradientCheckpointingLayer):
    """Shared residual wiring: pre- or post-LayerNorm around each sub-layer, dropout on its output."""

    def __init__(self, config: NATConfig):
        super().__init__()
        self.normalize_before = config.normalize_before
        self.dropout = config.dropout

    def residual(self, hidden_states: torch.Tensor, layer_norm: nn.LayerNorm, sublayer) -> torch.Tensor:
        output = sublayer(layer_norm(hidden_states) if self.normalize_before else hidden_states)
        hidden_states = hidden_states + F.dropout(output, p=self.dropout, training=self.training)
        return hidden_states if self.normalize_before else layer_norm(hidden_states)

    def attention_residual(
        self, hidden_states: torch.Tensor, layer_norm: nn.LayerNorm, attention: NATAttention, *args,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`residual` around an attention sub-layer; also returns its attention weights."""
        weights = []

        def sublayer(states):
            output, attention_weights = attention(states, *args, output_attentions=output_attentions)
            weights.append(attention_weights)
            return output

        return self.residual(hidden_states, layer_norm, sublayer), weights[0]


class NATEncoderLayer(NATResidualLayer):
    def __init__(self, config: NATConfig):
        super().__init__(config)
        self.self_attn = NATAttention(config, config.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.ffn = NATFeedForward(config, config.encoder_ffn_dim)
        self.final_layer_norm = nn.LayerNorm(config.d_model)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> output states and self-attention weights (see `NATAttention`)."""
        hidden_states, weights = self.attention_residual(
            hidden_states, self.self_attn_layer_norm, self.self_attn, attention_mask,
            output_attentions=output_attentions,
        )
        return self.residual(hidden_states, self.final_layer_norm, self.ffn), weights


class NATDecoderLayer(NATResidualLayer):
    def __init__(self, config: NATConfig):
        super().__init__(config)
        self.self_attn = NATAttention(config, config.decoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.encoder_attn = NATAttention(config, config.decoder_attention_heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.ffn = NATFeedForward(config, config.decoder_ffn_dim)
        self.final_layer_norm = nn.LayerNorm(config.d_model)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        cross_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """-> output states, self-attention and cross-attention weights (see `NATAttention`)."""
        hidden_states, self_weights = self.attention_residual(
            hidden_states, self.self_attn_layer_norm, self.self_attn, attention_mask,
            output_attentions=output_attentions,
        )
        hidden_states, cross_weights = self.attention_residual(
            hidden_states, self.encoder_attn_layer_norm, self.encoder_attn,
            encoder_attention_mask, encoder_hidden_states, cross_key_value, output_attentions=output_attentions,
        )
        return self.residual(hidden_states, self.final_layer_norm, self.ffn), self_weights, cross_weights


class NATPreTrainedModel(PreTrainedModel):
    config: NATConfig
    config_class = NATConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    # SDPA (default) and eager only. Not flex attention: padding masks are built once per batch, broadcast over
    # queries ([rows, 1, 1, keys]), and a flex BlockMask needs the query length. Not flash attention: its padding
    # path (`_upad_input`) unpads the queries of a cross-attention whose query length differs from the key
    # length with the LAST query_length columns of the key mask (left-padding semantics), which is wrong for
    # right-padded sources; and it cannot be tested on CPU.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _no_split_modules = ["NATEncoderLayer", "NATDecoderLayer"]

    @property
    def nat_method(self) -> NATMethod:
        """The method of `config.objective` (its heads, loss, decoding and options). Its presence is what marks a
        NAT model (e.g. for `inference.py` and `nat-hf bench`)."""
        return METHODS[self.config.objective]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, NATPositionEmbedding):
            if module.sinusoidal:
                init.copy_(module.weight, sinusoidal_positions(*module.weight.shape))
            else:
                init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    # ----------------------------------------------------------------------------------------------- checks
    # One rule for every entry point (NATModel.forward, NATForConditionalGeneration.forward and generate). In
    # eager mode every check runs on the values and raises a ValueError naming the problem. While torch.export or
    # torch.compile traces the model, the checks on values (padding layout, vocabulary range, lengths) are skipped:
    # they need the data on the host, which a traced graph cannot branch on. Checks on shapes and dtypes always run.
    def _ids_or_embeds(
        self, ids: torch.Tensor | None, embeds: torch.Tensor | None, mask: torch.Tensor | None, what: str,
        names: tuple[str, str, str],
    ) -> torch.Tensor:
        """The checks the source and the decoder inputs share: `ids` `[batch, length]` (integers) or `embeds`
        `[batch, length, d_model]`, exactly one; return the bool mask of real positions (`mask` if given, else the
        non-pad ids, else all ones), whose shape must match. `names`: the ids, embeds and mask argument names."""
        ids_name, embeds_name, mask_name = names
        if ids is not None and embeds is not None:
            raise ValueError(f"pass {what} as {ids_name} or as {embeds_name}, not both")
        if embeds is not None:
            if embeds.dim() != 3 or embeds.shape[-1] != self.config.d_model:
                raise ValueError(f"{embeds_name} must be [batch, length, d_model={self.config.d_model}], got "
                                 f"{tuple(embeds.shape)}")
            shape = embeds.shape[:2]
        elif ids is None:
            raise ValueError(f"{ids_name} is required (or {embeds_name})")
        elif ids.dim() != 2 or ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{ids_name} must be a 2-D integer tensor [batch, length], got {tuple(ids.shape)} "
                             f"{ids.dtype}")
        else:
            shape = ids.shape
        if mask is not None:
            mask = mask.bool()
        elif ids is not None:
            mask = ids != self.config.pad_token_id
        else:
            mask = torch.ones(shape, dtype=torch.bool, device=embeds.device)
        if mask.shape != shape:
            raise ValueError(f"{mask_name} shape {tuple(mask.shape)} differs from the {what} shape {tuple(shape)}")
        return mask

    def _check_vocabulary(self, ids: torch.Tensor, mask: torch.Tensor, name: str) -> None:
        """ValueError if an id at a real position (`mask`) lies outside the vocabulary; padded ones are never
        looked up, so they may hold anything."""
        out_of_vocab = mask & ((ids < 0) | (ids >= self.config.vocab_size))
        if out_of_vocab.any():
            bad = ids[out_of_vocab].unique().tolist()[:10]
            raise ValueError(f"{name} holds ids outside the vocabulary [0, {self.config.vocab_size}): {bad}")

    def _check_source(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        trim: bool = True,
        inputs_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Validate the source batch (right-padded; ids in the vocabulary except at padded positions, which are
        never looked up). Return the source (`input_ids`, or `inputs_embeds` `[batch, length, d_model]` when given
        instead) and a bool mask, trimmed to the longest row (`trim=True`, for `generate`) or else to at most
        `max_source_positions` columns; not trimmed while traced."""
        config = self.config
        attention_mask = self._ids_or_embeds(input_ids, inputs_embeds, attention_mask, "the source",
                                             ("input_ids", "inputs_embeds", "attention_mask"))
        shape = attention_mask.shape
        if shape[0] == 0 or shape[1] == 0:
            raise ValueError(f"the source is empty: shape {tuple(shape)}")
        source = input_ids if inputs_embeds is None else inputs_embeds
        if torch.compiler.is_compiling():
            return source, attention_mask
        lengths = attention_mask.sum(-1)
        if (lengths == 0).any():
            rows = (lengths == 0).nonzero().flatten().tolist()
            raise ValueError(f"rows {rows} of the batch are all padding: each source needs at least its "
                             "end-of-sentence token")
        if (attention_mask[:, 1:] & ~attention_mask[:, :-1]).any():
            raise ValueError("attention_mask must be right-padded (ones, then zeros); left padding is not supported")
        if input_ids is not None:
            self._check_vocabulary(input_ids, attention_mask, "input_ids")
        longest = int(lengths.max())
        if longest > config.max_source_positions:
            raise ValueError(
                f"a source has {longest} tokens but the model accepts at most max_source_positions="
                f"{config.max_source_positions}; tokenize with truncation=True (max_length="
                f"{config.max_source_positions}) to truncate"
            )
        width = longest if trim else min(shape[1], config.max_source_positions)
        return source[:, :width], attention_mask[:, :width]

    def _check_decoder_inputs(
        self,
        decoder_input_ids: torch.Tensor | None,
        decoder_attention_mask: torch.Tensor | None,
        decoder_inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Validate decoder inputs; return their bool target mask (from `decoder_attention_mask`, else the
        non-pad ids, else all ones for `decoder_inputs_embeds`). Ids at masked positions are not checked and
        never looked up."""
        config = self.config
        if decoder_inputs_embeds is not None and config.decoder_input_mode != "mask":
            raise ValueError("decoder_inputs_embeds needs decoder_input_mode='mask': a 'copy' decoder reads "
                             "the source, not decoder inputs")
        target_mask = self._ids_or_embeds(
            decoder_input_ids, decoder_inputs_embeds, decoder_attention_mask, "decoder input",
            ("decoder_input_ids", "decoder_inputs_embeds", "decoder_attention_mask"),
        )
        if target_mask.shape[1] > config.max_target_positions:
            raise ValueError(f"decoder inputs have {target_mask.shape[1]} positions but max_target_positions is "
                             f"{config.max_target_positions}")
        if decoder_input_ids is not None and not torch.compiler.is_compiling():
            self._check_vocabulary(decoder_input_ids, target_mask, "decoder_input_ids")
        return target_mask

    def _output_flags(self, output_attentions: bool | None, output_hidden_states: bool | None) -> tuple[bool, bool]:
        """Resolve the output flags: the argument, else the config. `output_attentions=True` runs that call's
        attention with `eager_attention_forward`, whatever the configured implementation."""
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return bool(output_attentions), bool(output_hidden_states)


class NATEncoder(nn.Module):
    """Positions + `encoder_layers` bidirectional self-attention layers (+ a final LayerNorm when pre-norm)."""

    def __init__(self, config: NATConfig):
        super().__init__()
        self.dropout = config.dropout
        self.embed_positions = NATPositionEmbedding(
            config.max_source_positions, config.d_model, config.position_embedding_type == "sinusoidal"
        )
        self.layers = nn.ModuleList(NATEncoderLayer(config) for _ in range(config.encoder_layers))
        self.layer_norm = nn.LayerNorm(config.d_model) if config.normalize_before else None

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutput:
        """Scaled token embeddings and the prepared key-padding mask -> encoder states (and, on request, every
        layer's states and attention weights)."""
        hidden_states = inputs_embeds + self.embed_positions(inputs_embeds.shape[1])
        hidden_states = F.dropout(hidden_states, p=self.dropout, training=self.training)
        # kept only on request: otherwise each layer's activations are freed as soon as the next layer has run
        all_states = [hidden_states] if output_hidden_states else None
        all_weights = [] if output_attentions else None
        for layer in self.layers:
            hidden_states, weights = layer(hidden_states, attention_mask, output_attentions)
            if all_states is not None:
                all_states.append(hidden_states)
            if all_weights is not None:
                all_weights.append(weights)
        if self.layer_norm is not None:
            hidden_states = self.layer_norm(hidden_states)
            if all_states is not None:
                all_states[-1] = hidden_states
        return BaseModelOutput(
            last_hidden_state=hidden_states,
            hidden_states=None if all_states is None else tuple(all_states),
            attentions=None if all_weights is None else tuple(all_weights),
        )


class NATDecoder(nn.Module):
    """Positions + `decoder_layers` layers of bidirectional self-attention, cross-attention and feed-forward."""

    def __init__(self, config: NATConfig):
        super().__init__()
        self.dropout = config.dropout
        self.embed_positions = NATPositionEmbedding(
            config.max_target_positions, config.d_model, config.position_embedding_type == "sinusoidal"
        )
        self.layers = nn.ModuleList(NATDecoderLayer(config) for _ in range(config.decoder_layers))
        self.layer_norm = nn.LayerNorm(config.d_model) if config.normalize_before else None

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        context: NATEncoderContext,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithCrossAttentions:
        """Decoder input embeddings, the prepared self-attention mask and the encoder context -> decoder states
        (and, on request, every layer's states, self- and cross-attention weights)."""
        hidden_states = inputs_embeds + self.embed_positions(inputs_embeds.shape[1])
        hidden_states = F.dropout(hidden_states, p=self.dropout, training=self.training)
        # kept only on request (see NATEncoder): generate's refinement passes keep no per-layer activations
        all_states = [hidden_states] if output_hidden_states else None
        self_weights, cross_weights = ([], []) if output_attentions else (None, None)
        for index, layer in enumerate(self.layers):
            key_value = None if context.cross_key_values is None else context.cross_key_values[index]
            hidden_states, weights, cross = layer(
                hidden_states, attention_mask, context.hidden_states, context.cross_attention_mask, key_value,
                output_attentions,
            )
            if all_states is not None:
                all_states.append(hidden_states)
            if self_weights is not None:
                self_weights.append(weights)
                cross_weights.append(cross)
        if self.layer_norm is not None:
            hidden_states = self.layer_norm(hidden_states)
            if all_states is not None:
                all_states[-1] = hidden_states
        return BaseModelOutputWithCrossAttentions(
            last_hidden_state=hidden_states,
            hidden_states=None if all_states is None else tuple(all_states),
            attentions=None if self_weights is None else tuple(self_weights),
            cross_attentions=None if cross_weights is None else tuple(cross_weights),
        )


class NATModel(NATPreTrainedModel):
    """Embeddings, encoder, decoder and the method's heads (e.g. `length_predictor`), without the output
    projection."""

    def __init__(self, config: NATConfig):
        super().__init__(config)
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        # `shared` embeds target tokens, and source tokens too unless share_encoder_decoder_embeddings is False.
        self.shared = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        self.source_embed_tokens = (
            None if config.share_encoder_decoder_embeddings
            else nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        )
        self.encoder = NATEncoder(config)
        self.decoder = NATDecoder(config)
        for name, head in self.nat_method.heads(config).items():  # e.g. `length_predictor` (its saved name)
            self.add_module(name, head)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding):
        self.shared = value

    def get_encoder(self) -> NATEncoder:
        return self.encoder

    def key_padding_mask(self, padding_mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
        """`[rows, keys]` bool (True = attend) -> the mask format of the configured attention implementation,
        broadcast over queries (`None` when nothing is masked): a bool mask for SDPA, an additive one for eager,
        each `[rows, 1, 1, keys]`, built once per batch whatever the query length (why flex attention, whose
        BlockMask needs the query length, is not supported)."""
        dummy_queries = like.new_empty(padding_mask.shape[0], 1, 1)  # only its shape, dtype and device are read
        return create_bidirectional_mask(config=self.config, inputs_embeds=dummy_queries, attention_mask=padding_mask)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`[batch, source_len]` ids and bool mask -> `[batch, source_len, d_model]` encoder states."""
        return self.encoder_outputs(input_ids, attention_mask).last_hidden_state

    def encoder_outputs(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutput:
        """The encoder's `BaseModelOutput` for ids (padded positions read as pad, so whatever they hold is never
        looked up) or for `inputs_embeds` (what the source embedding returns, before `embed_scale`)."""
        if inputs_embeds is None:
            embed = self.shared if self.source_embed_tokens is None else self.source_embed_tokens
            inputs_embeds = embed(input_ids.masked_fill(~attention_mask, self.config.pad_token_id))
        inputs_embeds = inputs_embeds * self.embed_scale
        return self.encoder(inputs_embeds, self.key_padding_mask(attention_mask, inputs_embeds),
                            output_hidden_states, output_attentions)

    def make_context(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        precompute_cross_attention: bool = False,
    ) -> NATEncoderContext:
        """Bundle the encoder output for the decoder; optionally compute every layer's cross-attention keys and
        values now (done once per `generate` call, reused by all refinement passes)."""
        key_values = None
        if precompute_cross_attention:
            key_values = [layer.encoder_attn.key_value(encoder_hidden_states) for layer in self.decoder.layers]
        return NATEncoderContext(
            hidden_states=encoder_hidden_states,
            attention_mask=attention_mask,
            input_ids=input_ids,
            cross_attention_mask=self.key_padding_mask(attention_mask, encoder_hidden_states),
            cross_key_values=key_values,
        )

    def decoder_self_attention_mask(self, target_mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
        """Decoder key-padding mask. Position 0 is always attendable so that an empty target (length 0) has no
        all-masked attention row, which would give NaN."""
        attend = target_mask.clone()
        attend[:, 0] = True
        return self.key_padding_mask(attend, like)

    def decoder_inputs_embeds(
        self, decoder_input_ids: torch.Tensor, target_mask: torch.Tensor, context: NATEncoderContext
    ) -> torch.Tensor:
        """Decoder input `[rows, target_len, d_model]`: embedded `decoder_input_ids` in `"mask"` mode; in `"copy"`
        mode, source token embeddings copied uniformly onto the target positions (Gu et al., 2018), position j of
        a target of length T taking source position round(j * (S - 1) / (T - 1)), except where
        `decoder_input_ids` holds an observed token (anything but `<mask>`, e.g. a token revealed by glancing),
        which is embedded as in `"mask"` mode."""
        if self.config.decoder_input_mode == "mask":
            # masked positions read as pad: whatever they hold is never looked up
            return self.shared(decoder_input_ids.masked_fill(~target_mask, self.config.pad_token_id)) * self.embed_scale
        if context.input_ids is None:
            raise ValueError("decoder_input_mode='copy' copies source tokens: pass input_ids, not inputs_embeds")
        embed = self.shared if self.source_embed_tokens is None else self.source_embed_tokens
        source_lengths = context.attention_mask.sum(-1, keepdim=True)  # [rows, 1]
        target_lengths = target_mask.sum(-1, keepdim=True)  # [rows, 1]
        positions = torch.arange(target_mask.shape[1], device=target_mask.device)[None, :]
        step = (source_lengths - 1) / (target_lengths - 1).clamp(min=1)
        index = (positions * step).round().long().clamp(max=source_lengths - 1)  # [rows, target_len]
        copied_ids = context.input_ids.masked_fill(~context.attention_mask, self.config.pad_token_id).gather(1, index)
        copied = embed(copied_ids) * self.embed_scale
        observed = target_mask & (decoder_input_ids != self.config.mask_token_id)  # [rows, target_len]
        tokens = self.shared(decoder_input_ids.masked_fill(~observed, self.config.pad_token_id)) * self.embed_scale
        return torch.where(observed[..., None], tokens, copied)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        target_mask: torch.Tensor,
        context: NATEncoderContext,
        self_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decoder states `[rows, target_len, d_model]`; pass a prepared `self_attention_mask` to skip its
        construction (generate prepares it once)."""
        return self.decoder_outputs(decoder_input_ids, target_mask, context, self_attention_mask).last_hidden_state

    def decoder_outputs(
        self,
        decoder_input_ids: torch.Tensor | None,
        target_mask: torch.Tensor,
        context: NATEncoderContext,
        self_attention_mask: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithCrossAttentions:
        """The decoder's output for ids or for `decoder_inputs_embeds` (what the target embedding returns, before
        `embed_scale`; `"mask"` mode only)."""
        if decoder_inputs_embeds is None:
            inputs_embeds = self.decoder_inputs_embeds(decoder_input_ids, target_mask, context)
        else:
            inputs_embeds = decoder_inputs_embeds * self.embed_scale
        if self_attention_mask is None:
            self_attention_mask = self.decoder_self_attention_mask(target_mask, inputs_embeds)
        return self.decoder(inputs_embeds, self_attention_mask, context, output_hidden_states, output_attentions)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        decoder_inputs_embeds: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> NATModelOutput | tuple:
        """Encoder states and the method's head outputs (length logits) of the source; decoder states too when
        decoder inputs are given.

        Args:
            input_ids: `[batch, source_len]` right-padded source ids (or `inputs_embeds`, `[batch, source_len,
                d_model]`, what the source embedding returns, before `embed_scale`).
            attention_mask: 1 on real source tokens (default: the non-pad ids; all ones with `inputs_embeds`).
                Left padding raises ValueError. Ids at padded positions are never looked up.
            decoder_input_ids: `[batch, target_len]` decoder inputs (`<mask>` at unknown positions), or
                `decoder_inputs_embeds`.
            decoder_attention_mask: 1 on real target positions (default: the non-pad ids; all ones with
                `decoder_inputs_embeds`).
            output_attentions / output_hidden_states / return_dict: override the config's. With
                `output_attentions=True` the attention of that call is computed eagerly (matmul + softmax) whatever
                `attn_implementation` is, since only eager attention has weights to return.
        """
        output_attentions, output_hidden_states = self._output_flags(output_attentions, output_hidden_states)
        source, attention_mask = self._check_source(input_ids, attention_mask, trim=False, inputs_embeds=inputs_embeds)
        input_ids, inputs_embeds = (None, source) if inputs_embeds is not None else (source, None)
        encoder = self.encoder_outputs(input_ids, attention_mask, inputs_embeds, output_hidden_states,
                                       output_attentions)
        decoder = BaseModelOutputWithCrossAttentions()
        if decoder_input_ids is not None or decoder_inputs_embeds is not None:
            target_mask = self._check_decoder_inputs(decoder_input_ids, decoder_attention_mask, decoder_inputs_embeds)
            context = self.make_context(input_ids, attention_mask, encoder.last_hidden_state)
            decoder = self.decoder_outputs(decoder_input_ids, target_mask, context, None, decoder_inputs_embeds,
                                           output_hidden_states, output_attentions)
        return NATModelOutput(
            last_hidden_state=decoder.last_hidden_state,
            length_logits=self.nat_method.head_outputs(self, encoder.last_hidden_state, attention_mask).get(
                "length_logits"),
            decoder_hidden_states=decoder.hidden_states,
            decoder_attentions=decoder.attentions,
            cross_attentions=decoder.cross_attentions,
            encoder_last_hidden_state=encoder.last_hidden_state,
            encoder_hidden_states=encoder.hidden_states,
            encoder_attentions=encoder.attentions,
        )


class NATForConditionalGeneration(NATPreTrainedModel, GenerationMixin):
    """NAT translation model: [`NATModel`] + output projection, a training `forward` (loss from `labels` through
    the configured method) and a parallel `generate` (the method's decoding)."""

    _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}
    # forward() returns a loss already averaged over its batch: Trainer must not rescale it.
    accepts_loss_kwargs = False

    def __init__(self, config: NATConfig):
        super().__init__(config)
        self.model = NATModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()
        # A fresh GenerationConfig (not one derived from the model config) so that the NAT options survive
        # save_pretrained / from_pretrained.
        self.generation_config = GenerationConfig(
            **self.nat_method.option_defaults(), pad_token_id=config.pad_token_id, eos_token_id=config.eos_token_id
        )

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus the translation pipeline's code and its `custom_pipelines`
        entry in config.json."""
        if PIPELINE_FILE.is_file():
            self.config.custom_pipelines = CUSTOM_PIPELINES
        super().save_pretrained(save_directory, *args, **kwargs)
        if PIPELINE_FILE.is_file():
            shutil.copy(PIPELINE_FILE, Path(save_directory) / PIPELINE_FILE.name)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.shared

    def set_input_embeddings(self, value: nn.Embedding):
        self.model.shared = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear):
        self.lm_head = value

    def get_encoder(self) -> NATEncoder:
        return self.model.encoder

    def _prepare_targets(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`labels` (right-padded with pad or -100, optionally closed by end-of-sentence) -> target ids without
        end-of-sentence, pad-filled, and their bool mask, trimmed to the longest target."""
        config = self.config
        if labels.dim() != 2:
            raise ValueError(f"labels must be 2-D [batch, length], got shape {tuple(labels.shape)}")
        target = labels.masked_fill(labels == -100, config.pad_token_id)
        target = target.masked_fill(target == config.eos_token_id, config.pad_token_id)
        target_mask = target != config.pad_token_id
        if (target_mask[:, 1:] & ~target_mask[:, :-1]).any():
            raise ValueError("labels must be right-padded, with end-of-sentence only at the end of each target")
        out_of_vocab = target_mask & ((target < 0) | (target >= config.vocab_size))
        if out_of_vocab.any():
            raise ValueError(f"labels hold ids outside the vocabulary [0, {config.vocab_size}): "
                             f"{target[out_of_vocab].unique().tolist()[:10]}")
        longest = max(int(target_mask.sum(-1).max()), 1)
        if longest > config.max_target_positions:
            raise ValueError(f"a target has {longest} tokens but max_target_positions is "
                             f"{config.max_target_positions}")
        return target[:, :longest], target_mask[:, :longest]

    # ------------------------------------------------------------------------------------- forward passes
    def decoder_logits(
        self,
        decoder_input_ids: torch.Tensor,
        target_mask: torch.Tensor,
        context: NATEncoderContext,
        self_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One decoder pass: `[rows, target_len]` inputs -> `[rows, target_len, vocab]` logits."""
        return self.lm_head(self.model.decode(decoder_input_ids, target_mask, context, self_attention_mask))

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        decoder_inputs_embeds: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        step: int | None = None,
    ) -> NATSeq2SeqLMOutput | tuple:
        """With `labels`: the training loss of the method (`config.objective`). With `decoder_input_ids` (or
        `decoder_inputs_embeds`): the logits of one decoder pass over them.

        `step`, the training step (optional; the training loop passes it, transformers' Trainer does not), reaches
        the method's loss for schedules; `cmlm` and `vanilla` do not read it.

        The source is `input_ids` (right-padded; or `inputs_embeds`) and its `attention_mask`, as in
        [`NATModel.forward`]. `labels` are target ids right-padded with pad or -100, as a tokenizer's `text_target`
        gives them. `labels` together with decoder inputs raises ValueError: the objective builds the decoder
        inputs from the labels (e.g. CMLM's random masking), so given ones could not be used as given.
        """
        if labels is not None and (decoder_input_ids is not None or decoder_inputs_embeds is not None):
            raise ValueError(
                "pass labels (the training objective builds the decoder inputs from them) or decoder_input_ids / "
                "decoder_inputs_embeds (one decoder pass over given inputs), not both"
            )
        if labels is None:
            outputs = self.model(
                input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=decoder_attention_mask, inputs_embeds=inputs_embeds,
                decoder_inputs_embeds=decoder_inputs_embeds, output_attentions=output_attentions,
                output_hidden_states=output_hidden_states, return_dict=True,
            )
            return NATSeq2SeqLMOutput(
                logits=None if outputs.last_hidden_state is None else self.lm_head(outputs.last_hidden_state),
                length_logits=outputs.length_logits,
                decoder_hidden_states=outputs.decoder_hidden_states,
                decoder_attentions=outputs.decoder_attentions,
                cross_attentions=outputs.cross_attentions,
                encoder_last_hidden_state=outputs.encoder_last_hidden_state,
                encoder_hidden_states=outputs.encoder_hidden_states,
                encoder_attentions=outputs.encoder_attentions,
            )
        output_attentions, output_hidden_states = self._output_flags(output_attentions, output_hidden_states)
        source, attention_mask = self._check_source(input_ids, attention_mask, trim=False, inputs_embeds=inputs_embeds)
        input_ids, inputs_embeds = (None, source) if inputs_embeds is not None else (source, None)
        encoder = self.model.encoder_outputs(input_ids, attention_mask, inputs_embeds, output_hidden_states,
                                             output_attentions)
        context = self.model.make_context(input_ids, attention_mask, encoder.last_hidden_state)
        target, target_mask = self._prepare_targets(labels)
        result = self.nat_method.loss(self, context, target, target_mask, step)
        return NATSeq2SeqLMOutput(
            loss=result.total, logits=result.logits, length_logits=result.outputs.get("length_logits"),
            token_loss=result.terms.get("token"), length_loss=result.terms.get("length"), loss_terms=result.terms,
            loss_counts=result.counts,
            encoder_last_hidden_state=encoder.last_hidden_state, encoder_hidden_states=encoder.hidden_states,
            encoder_attentions=encoder.attentions,
        )

    # ------------------------------------------------------------------------------------------ decoding
    def prepare_decoder_mask(
        self, lengths: torch.Tensor, target_len: int, context: NATEncoderContext
    ) -> torch.Tensor | None:
        """The decoder self-attention mask for hypotheses of the given lengths, built once per `generate`."""
        target_mask = torch.arange(target_len, device=lengths.device)[None, :] < lengths[:, None]
        return self.model.decoder_self_attention_mask(target_mask, context.hidden_states)

    def _generation_options(self, generation_config: GenerationConfig | None, kwargs: dict) -> dict:
        """Resolve decoding options (call-site kwargs > generation config > the method's defaults) and reject what
        NAT decoding cannot honour, with a ValueError naming the option, before any computation: the method's own
        options (declared by its `Options`, checked by it) and the options every method shares (`max_new_tokens`
        / `max_length`, `return_dict_in_generate`; `do_sample` and `num_beams` > 1 are refused). Pops what it
        reads from `kwargs`."""
        generation_config = generation_config if generation_config is not None else self.generation_config
        if not isinstance(generation_config, GenerationConfig):
            raise ValueError(f"generation_config must be a transformers.GenerationConfig, got "
                             f"{type(generation_config).__name__}")

        method = self.nat_method
        options = {name: kwargs.pop(name, getattr(generation_config, name, default))
                   for name, default in method.option_defaults().items()}
        do_sample = kwargs.pop("do_sample", generation_config.do_sample)
        num_beams = kwargs.pop("num_beams", generation_config.num_beams)
        if do_sample is not None and not isinstance(do_sample, bool):
            raise ValueError(f"do_sample must be a bool, got {do_sample!r}")
        if do_sample:
            raise ValueError(f"do_sample=True is an autoregressive option: NAT decoding is deterministic (method "
                             f"{method.name!r} takes {sorted(method.option_defaults())})")
        if num_beams is not None:
            if check_integer("num_beams", num_beams, 1) > 1:
                raise ValueError(f"num_beams={num_beams} is beam search, an autoregressive option: NAT decoding does "
                                 f"not search token by token (method {method.name!r} takes "
                                 f"{sorted(method.option_defaults())})")
        method.check_options(self.config, options)
        max_length = self.config.max_target_positions
        max_new_tokens = kwargs.pop("max_new_tokens", generation_config.max_new_tokens)
        call_max_length = kwargs.pop("max_length", None)  # the config's max_length (default 20) is an AR default
        for name, value in (("max_new_tokens", max_new_tokens), ("max_length", call_max_length)):
            if value is not None:
                # the returned sequence ends with end-of-sentence
                max_length = min(max_length, check_integer(name, value, 1) - 1)
        options["max_length"] = max_length  # target tokens before end-of-sentence; 0: empty translations
        return_dict = kwargs.pop("return_dict_in_generate", generation_config.return_dict_in_generate)
        if return_dict is not None and not isinstance(return_dict, bool):
            raise ValueError(f"return_dict_in_generate must be a bool, got {return_dict!r}")
        options["return_dict_in_generate"] = bool(return_dict)  # None (the v5 default): False
        for name in IGNORED_GENERATE_KWARGS:
            kwargs.pop(name, None)
        foreign = sorted(set(kwargs) & set(decoding_option_help()))
        if foreign:  # another method's options, e.g. length_beam for a CTC model
            raise ValueError(f"decoding option(s) {foreign} do not apply to method {method.name!r} (its options: "
                             f"{sorted(method.option_defaults())})")
        if kwargs:
            raise ValueError(
                f"generate() got options that NAT decoding does not support: {sorted(kwargs)}. Autoregressive "
                "options (sampling, beam search, repetition penalties, ...) do not apply; NAT decoding takes "
                f"{sorted(method.option_defaults())}, max_new_tokens and return_dict_in_generate."
            )
        return options

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.LongTensor | None = None,
        generation_config: GenerationConfig | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.LongTensor | NATGenerateOutput:
        """Translate a batch in parallel with the method's decoding (`cmlm`/`vanilla`: Mask-Predict).

        For `cmlm`/`vanilla`: predicts the length distribution, keeps the `length_beam` most probable lengths,
        decodes every candidate with `num_iterations` refinement passes, and returns the candidate with the best
        mean log-probability. The encoder runs once per batch; the candidates share its output and precomputed
        cross-attention keys.

        Args:
            inputs / input_ids: `[batch, source_len]` right-padded source ids.
            attention_mask: `[batch, source_len]`, 1 on real tokens (derived from padding if omitted).
            generation_config: overrides `self.generation_config`.
            kwargs: the method's options (`cmlm`/`vanilla`: `num_iterations`, `length_beam`,
                `decoding_strategy`), `max_new_tokens` / `max_length` (cap on
                the returned sequence, end-of-sentence included: a cap of 1 leaves end-of-sentence alone, an empty
                translation), `return_dict_in_generate`. A bad option raises ValueError before any computation.

        Returns:
            `[batch, longest + 1]` LongTensor: tokens, end-of-sentence, then padding (a `NATGenerateOutput` with
            `return_dict_in_generate=True`). A source with no token besides end-of-sentence gives an empty
            translation.

        Raises:
            method_base.NonFiniteScoresError (a FloatingPointError): the length logits or the token scores hold NaN or
                inf (e.g. NaN weights), checked once after the last pass; no garbage translation is returned.

        Memory: besides the model's activations, each pass materialises at most `method_base.LOGITS_BUDGET_BYTES`
        (16 MiB) of float32 logits (twice that with logsumexp's temporary): the output projection runs over
        chunks of positions, so the peak does not grow with batch x length_beam x length x vocabulary.
        """
        if inputs is not None and input_ids is not None:
            raise ValueError("pass the source as `inputs` or as `input_ids`, not both")
        options = self._generation_options(generation_config, kwargs)
        input_ids, attention_mask = self._check_source(inputs if inputs is not None else input_ids, attention_mask)
        hypotheses = self.nat_method.decode(self, input_ids, attention_mask, options)
        sequences = finish_sequences(hypotheses.tokens, hypotheses.lengths, self.config.eos_token_id,
                                     self.config.pad_token_id)
        if options["return_dict_in_generate"]:
            return NATGenerateOutput(sequences=sequences, sequences_scores=hypotheses.scores,
                                     lengths=hypotheses.lengths)
        return sequences


__all__ = ["NATForConditionalGeneration", "NATModel", "NATPreTrainedModel"]
