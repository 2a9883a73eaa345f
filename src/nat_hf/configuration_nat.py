"""Configuration of non-autoregressive (NAT) encoder-decoder translation models."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

LENGTH_PREDICTION_MODES = ("offset", "absolute")
DECODER_INPUT_MODES = ("mask", "copy")
POSITION_EMBEDDING_TYPES = ("learned", "sinusoidal")


@strict
class NATConfig(PreTrainedConfig):
    r"""
    Configuration of a [`NATForConditionalGeneration`]: a Transformer encoder, a length predictor on the pooled
    encoder states, and a decoder that attends to all target positions at once (no causal mask) and predicts every
    target token in parallel.

    Decoding options (the method's, e.g. `num_iterations`, `length_beam`) are not stored here: they live in the
    model's `generation_config` (see `NATForConditionalGeneration.generate`).

    Args:
        vocab_size (`int`, defaults to 8000):
            Size of the (joint) vocabulary: rows of the token embeddings and of the output projection.
        d_model (`int`, defaults to 512):
            Width of every hidden state.
        encoder_layers (`int`, defaults to 6):
            Number of encoder layers.
        decoder_layers (`int`, defaults to 6):
            Number of decoder layers.
        encoder_attention_heads (`int`, defaults to 8):
            Attention heads per encoder layer; must divide `d_model`.
        decoder_attention_heads (`int`, defaults to 8):
            Attention heads per decoder layer (self- and cross-attention); must divide `d_model`.
        encoder_ffn_dim (`int`, defaults to 2048):
            Inner width of the encoder feed-forward blocks.
        decoder_ffn_dim (`int`, defaults to 2048):
            Inner width of the decoder feed-forward blocks.
        activation_function (`str`, defaults to `"gelu"`):
            Feed-forward activation, any key of `transformers.activations.ACT2FN`.
        dropout (`float`, defaults to 0.1):
            Dropout on embeddings and on the output of every sub-layer.
        attention_dropout (`float`, defaults to 0.0):
            Dropout on attention probabilities.
        activation_dropout (`float`, defaults to 0.0):
            Dropout after the feed-forward activation.
        normalize_before (`bool`, defaults to `False`):
            Pre-LayerNorm (`True`, with a final LayerNorm on each stack) or post-LayerNorm residual blocks (`False`,
            as in the original Transformer, Marian and fairseq's CMLM).
        max_source_positions (`int`, defaults to 256):
            Longest source, in tokens (end-of-sentence included), the model accepts.
        max_target_positions (`int`, defaults to 256):
            Longest target, in tokens (end-of-sentence excluded), the model can produce.
        position_embedding_type (`str`, defaults to `"learned"`):
            `"learned"` position embeddings or fixed `"sinusoidal"` ones (as in Marian).
        scale_embedding (`bool`, defaults to `True`):
            Multiply token embeddings by `sqrt(d_model)`.
        share_encoder_decoder_embeddings (`bool`, defaults to `True`):
            One token embedding matrix for source and target (a joint vocabulary).
        tie_word_embeddings (`bool`, defaults to `True`):
            Tie the output projection to the target token embeddings.
        init_std (`float`, defaults to 0.02):
            Standard deviation of the normal initialisation of linear and embedding weights.
        length_prediction_mode (`str`, defaults to `"offset"`):
            What the length predictor classifies: `"offset"`, the target length minus the source length (source
            tokens, end-of-sentence included) in `[-max_length_offset, max_length_offset]`; or `"absolute"`, the
            target length in `[0, max_target_positions]`.
        max_length_offset (`int`, defaults to 64):
            Largest length offset the predictor can express in `"offset"` mode. Training targets beyond it are
            clipped to it for the length loss only; the token loss still sees the whole target.
        length_loss_weight (`float`, defaults to 0.1):
            Weight of the length cross-entropy in the total loss.
        label_smoothing (`float`, defaults to 0.1):
            Label smoothing of the token cross-entropy.
        objective (`str`, defaults to `"cmlm"`):
            The method (training objective, heads and decoding), a key of `nat_hf.methods.METHODS` (the README
            lists them), e.g. `"cmlm"` (conditional masked LM, Mask-Predict). The method's own rules on the other
            fields run with the architecture checks.
        method_options (`dict`, *optional*):
            Training hyper-parameters of the method that are not fields here (e.g. an upsampling ratio, a glancing
            schedule), declared with their defaults and validated by the method (`TrainingOptions` in
            `method_<objective>.py`): an unknown key or a bad value is a ValueError naming it. After validation it
            holds every option of the method, defaults filled in, so a saved config.json shows them all.
        decoder_input_mode (`str`, defaults to `"mask"`):
            What the decoder reads: `"mask"`, target token embeddings with `<mask>` at unknown positions (needed by
            CMLM and iterative refinement); or `"copy"`, source token embeddings copied uniformly onto the target
            positions (Gu et al., 2018; one-pass decoding only).
        pad_token_id (`int`, defaults to 0):
            Padding token.
        eos_token_id (`int`, defaults to 1):
            End-of-sentence token: closes every source; labels may end with it (it is not predicted: the length
            predictor decides where the target ends).
        unk_token_id (`int`, defaults to 2):
            Unknown-token id.
        mask_token_id (`int`, defaults to 3):
            `<mask>`: the decoder input at positions whose token is still to be predicted.
        blank_token_id (`int`, *optional*):
            Blank token for CTC-style objectives; never produced by Mask-Predict decoding.
        is_encoder_decoder (`bool`, defaults to `True`):
            Always `True`: tells transformers this is a sequence-to-sequence model.

    Example:

    ```python
    >>> from nat_hf import NATConfig, NATForConditionalGeneration
    >>> config = NATConfig(vocab_size=8000, d_model=256, encoder_layers=3, decoder_layers=3)
    >>> model = NATForConditionalGeneration(config)
    ```
    """

    model_type = "nat"
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "encoder_attention_heads",
        "num_hidden_layers": "encoder_layers",
    }

    vocab_size: int = 8000
    d_model: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    activation_function: str = "gelu"
    dropout: float | int = 0.1
    attention_dropout: float | int = 0.0
    activation_dropout: float | int = 0.0
    normalize_before: bool = False
    max_source_positions: int = 256
    max_target_positions: int = 256
    position_embedding_type: str = "learned"
    scale_embedding: bool = True
    share_encoder_decoder_embeddings: bool = True
    tie_word_embeddings: bool = True
    init_std: float = 0.02
    length_prediction_mode: str = "offset"
    max_length_offset: int = 64
    length_loss_weight: float | int = 0.1
    label_smoothing: float | int = 0.1
    objective: str = "cmlm"
    method_options: dict | None = None
    decoder_input_mode: str = "mask"
    pad_token_id: int | None = 0
    eos_token_id: int | None = 1
    unk_token_id: int | None = 2
    mask_token_id: int = 3
    blank_token_id: int | None = None
    bos_token_id: int | None = None
    is_encoder_decoder: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate_architecture()

    @property
    def num_length_classes(self) -> int:
        """Number of classes of the length predictor."""
        if self.length_prediction_mode == "offset":
            return 2 * self.max_length_offset + 1
        return self.max_target_positions + 1

    def validate_architecture(self):
        """Raise `ValueError`, naming the field, for any invalid value or combination."""

        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"NATConfig: {message}")

        for name in ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_ffn_dim",
                     "decoder_ffn_dim", "max_source_positions", "max_target_positions", "max_length_offset"):
            check(getattr(self, name) >= 1, f"`{name}` must be >= 1, got {getattr(self, name)}")
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            heads = getattr(self, name)
            check(heads >= 1 and self.d_model % heads == 0,
                  f"`{name}` ({heads}) must be >= 1 and divide `d_model` ({self.d_model})")
        for name in ("dropout", "attention_dropout", "activation_dropout", "label_smoothing"):
            check(0.0 <= getattr(self, name) < 1.0, f"`{name}` must be in [0, 1), got {getattr(self, name)}")
        check(self.length_loss_weight >= 0, f"`length_loss_weight` must be >= 0, got {self.length_loss_weight}")
        # The registry is imported here, not at module level: the config module loads no method (loss) code
        # until a config is validated, and `methods` never imports this module (no cycle).
        from .methods import METHODS

        check(self.objective in METHODS,
              f"`objective` must be one of {sorted(METHODS)}, got {self.objective!r}")
        check(self.decoder_input_mode in DECODER_INPUT_MODES,
              f"`decoder_input_mode` must be one of {DECODER_INPUT_MODES}, got {self.decoder_input_mode!r}")
        method = METHODS[self.objective]
        self.method_options = method.check_training_options(self.method_options)  # defaults filled in
        method.validate_config(self)  # the method's own rules (ValueError naming the field)
        check(self.length_prediction_mode in LENGTH_PREDICTION_MODES,
              f"`length_prediction_mode` must be one of {LENGTH_PREDICTION_MODES}, "
              f"got {self.length_prediction_mode!r}")
        check(self.position_embedding_type in POSITION_EMBEDDING_TYPES,
              f"`position_embedding_type` must be one of {POSITION_EMBEDDING_TYPES}, "
              f"got {self.position_embedding_type!r}")
        check(self.position_embedding_type != "sinusoidal" or self.d_model % 2 == 0,
              f"`d_model` must be even for sinusoidal positions, got {self.d_model}")
        special = {name: getattr(self, name) for name in
                   ("pad_token_id", "eos_token_id", "unk_token_id", "mask_token_id", "blank_token_id")}
        for name, value in special.items():
            required = name in ("pad_token_id", "eos_token_id", "mask_token_id")
            check(value is not None or not required, f"`{name}` is required")
            check(value is None or 0 <= value < self.vocab_size,
                  f"`{name}` ({value}) must lie in [0, vocab_size={self.vocab_size})")
        given = [value for value in special.values() if value is not None]
        check(len(set(given)) == len(given), f"special token ids must be distinct, got {special}")


__all__ = ["NATConfig"]
