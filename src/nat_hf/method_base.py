"""What every NAT method shares: the interface a method implements, and the pieces several methods use.

A *method* (CMLM/Mask-Predict, vanilla, and later GLAT, CTC, DAG) is one flat file `method_<name>.py` plus one row
in `methods.METHODS`. It owns, behind `NATMethod`:

- `Options`: a dataclass of its decoding options (field names, types, defaults) with `validate(config)`. The
  model's `generation_config` defaults, `generate`'s validation, the `nat-hf translate/evaluate` flags and the
  pipeline (which validates through the model) all read the fields from here.
- `TrainingOptions`: a dataclass of its training hyper-parameters that are not `NATConfig` fields (kept in
  `NATConfig.method_options`, validated and filled with defaults when the config is built).
- `validate_config(config)`: its cross-field rules on `NATConfig`, run when a config is built (so at YAML time
  too: the training config check builds a `NATConfig`).
- `heads(config)`: the modules it adds to the backbone (`NATModel`), by attribute name (the length predictor is
  `model.length_predictor`, the name saved checkpoints use).
- `head_outputs(backbone, encoder_hidden_states, attention_mask)`: what its heads say about a source
  (`{"length_logits": ...}`), returned by `NATModel.forward`.
- `loss(model, context, target, target_mask, step)`: a `LossOutput` with named terms; `step` is the training step
  (None when the caller does not say, e.g. transformers' Trainer), for schedules.
- `decode(model, input_ids, attention_mask, options)`: `Hypotheses`; the model closes them with end-of-sentence.

Nothing here imports the model file (`modeling_nat.py` imports the methods): no import cycle, and the folder stays
flat for remote code.
"""

import dataclasses
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# Largest float32 logits buffer `[positions, vocab]` that one refinement pass materialises: the output projection
# runs over chunks of positions so that peak memory does not grow with batch x length_beam x length x vocabulary.
# A chunk holds at least one position (a vocabulary over the budget still works, one position at a time). 16 MiB
# (with logsumexp's temporary of the same size) stays under glibc's largest mmap threshold (32 MB): on CPU, larger
# chunks are handed back to the kernel and page-faulted in again for every chunk (README, "Memory").
LOGITS_BUDGET_BYTES = 16 * 2**20


def check_integer(name: str, value, minimum: int) -> int:
    """`value` as an int (Python, numpy or 0-d torch integers accepted; bools are not), or ValueError naming
    `name` unless it is an integer >= `minimum`."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return number


def check_length_beam(value, config) -> int:
    """`length_beam` as an int between 1 and the model's number of length classes, or ValueError naming it."""
    length_beam = check_integer("length_beam", value, 1)
    if length_beam > config.num_length_classes:
        raise ValueError(f"length_beam={length_beam} exceeds the number of length classes "
                         f"({config.num_length_classes})")
    return length_beam


class NonFiniteScoresError(FloatingPointError):
    """Decoding met NaN or infinite logits: the translations would be garbage (typically NaN weights from a
    diverged training run, or a float16 overflow)."""


@dataclass
class LossOutput:
    """What a method's `loss` returns: the total to optimise, its named terms, and the decoder logits it trained
    on. `outputs` holds other tensors worth returning (e.g. `length_logits`)."""

    total: torch.Tensor  # []
    terms: dict[str, torch.Tensor]  # e.g. {"token": ..., "length": ...}, each []
    logits: torch.Tensor | None  # [batch, decoder_len, vocab]; None where the loss never builds them
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    # events the training loop sums and logs, e.g. {"skipped_targets": rows left out of the loss because their
    # target cannot fit the decoder's positions}; each a [] tensor (no host sync in the step)
    counts: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Hypotheses:
    """One chosen hypothesis per sentence: tokens (without end-of-sentence; anything past `lengths`), lengths, and
    the mean token log-probability."""

    tokens: torch.Tensor  # [batch, decoder_len] long
    lengths: torch.Tensor  # [batch] long
    scores: torch.Tensor  # [batch] float


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


@dataclass
class NoOptions:
    """A method without decoding options."""

    def validate(self, config=None) -> None:
        """Nothing to check."""


class NATMethod:
    """The interface of a method (see the module docstring). Subclasses set `name` and `Options` and implement
    `loss` and `decode`; the other hooks default to "nothing"."""

    name: str = ""
    # what a model card says the method is (for a reader of the Hub) and the paper to cite
    summary: str = ""
    paper: str = ""
    Options: type = NoOptions
    # Training hyper-parameters kept in `NATConfig.method_options` (a dataclass; `validate(self)` may check them).
    TrainingOptions: type = NoOptions
    # Whether decoder position i holds target token i (a planned length, no blanks, no upsampling), and
    # `one_pass_logits` gives that distribution: what a speculative drafter and an adversarial generator need.
    predicts_target_positions: bool = False

    def check_training_options(self, given: dict | None) -> dict:
        """`NATConfig.method_options` checked against `TrainingOptions`: every option, defaults filled in. Unknown
        keys or bad values raise ValueError naming them."""
        given = {} if given is None else given
        if not isinstance(given, dict):
            raise ValueError(f"NATConfig: `method_options` must be a mapping, got {type(given).__name__}")
        declared = [option.name for option in dataclasses.fields(self.TrainingOptions)]
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise ValueError(f"NATConfig: `method_options` {unknown} are not options of method {self.name!r} "
                             f"(its options: {declared})")
        options = self.TrainingOptions(**given)
        options.validate()  # cross-field rules with the config: `validate_config`
        return dataclasses.asdict(options)

    def training_options(self, config):
        """The method's `TrainingOptions` of a (validated) `config`."""
        return self.TrainingOptions(**(config.method_options or {}))

    def option_defaults(self) -> dict:
        """`{name: default}` of the decoding options, in declaration order."""
        return {option.name: option.default for option in dataclasses.fields(self.Options)}

    def option_help(self) -> dict:
        """`{name: (type, help)}` of the decoding options, for command-line flags."""
        return {option.name: (option.type, option.metadata.get("help", ""))
                for option in dataclasses.fields(self.Options)}

    def check_options(self, config, options: dict) -> None:
        """Raise ValueError naming the option if the decoding options (all of `Options`' fields) cannot be used
        with a model of this `config`, or if one is not this method's."""
        unknown = sorted(set(options) - set(self.option_defaults()))
        if unknown:
            raise ValueError(f"decoding option(s) {unknown} do not apply to method {self.name!r} (its options: "
                             f"{sorted(self.option_defaults())})")
        validated = self.Options(**options)
        validated.validate(config)
        options.update(dataclasses.asdict(validated))  # normalised values (e.g. numpy integers as ints)

    def validate_config(self, config) -> None:
        """Raise ValueError naming the field if `config` (a `NATConfig`) does not suit the method."""

    def heads(self, config) -> dict[str, nn.Module]:
        """Modules the method adds to the backbone, by attribute name."""
        return {}

    def head_outputs(self, backbone, encoder_hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        """What the method's heads compute from the encoder output (returned by `NATModel.forward`)."""
        return {}

    def loss(self, model, context, target: torch.Tensor, target_mask: torch.Tensor, step: int | None = None
             ) -> LossOutput:
        """The training loss of a batch: `target` `[batch, target_len]` ids without end-of-sentence, right-padded,
        `target_mask` its bool mask, `context` the batch's `NATEncoderContext`."""
        raise NotImplementedError

    def decode(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, options: dict,
               forced_lengths: torch.Tensor | None = None) -> Hypotheses:
        """Translate a checked batch. `options` holds the `Options` fields and `generate`'s own `max_length`
        (target tokens allowed before end-of-sentence) and `return_dict_in_generate`. `forced_lengths` `[batch]`,
        for benchmarks, fixes the output length where the method plans one."""
        raise NotImplementedError

    def timing_pass(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The arithmetic of one-pass decoding without `generate`'s bookkeeping (for `nat-hf bench`)."""
        raise NotImplementedError

    def is_single_pass(self, options: dict) -> bool:
        """Whether decoding with these options is one decoder pass over one hypothesis per sentence (what
        `timing_pass` measures)."""
        return False


# ------------------------------------------------------------------------------------------- shared pieces
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


def methods_predicting_target_positions(methods: dict) -> list[str]:
    """The names of the registry's methods whose decoder positions are target positions (for error messages)."""
    return sorted(name for name, method in methods.items() if method.predicts_target_positions)


def left_pack(tokens: torch.Tensor, keep: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept tokens of each row moved to its front, in order: `tokens`, `keep` `[B, L]` -> `(packed [B, L'],
    counts [B])`, right-padded with `pad`, `L'` the largest count (e.g. an alignment read off by dropping blanks)."""
    batch, positions = tokens.shape
    counts = keep.sum(dim=1)
    slot = keep.long().cumsum(dim=1) - 1  # where each kept token goes
    out = tokens.new_full((batch, positions), pad)
    rows, cols = keep.nonzero(as_tuple=True)
    out[rows, slot[rows, cols]] = tokens[rows, cols]
    return out[:, : int(counts.max()) if batch else 0], counts


def special_token_ids(config) -> list[int]:
    """Token ids no decoding ever outputs."""
    return [i for i in (config.pad_token_id, config.eos_token_id, config.mask_token_id, config.blank_token_id,
                        config.bos_token_id) if i is not None]


def chunk_positions(vocab_size: int, budget_bytes: int | None = None) -> int:
    """Positions per chunk of the output projection whose float32 logits fit `budget_bytes` (default
    `LOGITS_BUDGET_BYTES`, read at call time), at least one."""
    budget = LOGITS_BUDGET_BYTES if budget_bytes is None else budget_bytes
    return max(1, budget // (4 * vocab_size))


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
    flat = hidden.reshape(-1, hidden.shape[-1])
    chunk = chunk_positions(output_layer.out_features, budget_bytes)
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


def check_finite(named: dict[str, torch.Tensor]) -> None:
    """Raise `NonFiniteScoresError` if any of the named tensors (e.g. "length logits", "token scores") holds NaN
    or inf.

    One host synchronisation, made once per `generate` call after the last pass: NaN logits give arbitrary tokens
    (often end-of-sentence-only or empty strings) that must not pass for translations."""
    finite = torch.stack([torch.isfinite(tensor).all() for tensor in named.values()]).tolist()
    if not all(finite):
        where = " and ".join(name for name, ok in zip(named, finite, strict=True) if not ok)
        raise NonFiniteScoresError(
            f"generate produced non-finite (NaN or inf) {where}: the model's weights or activations are not finite "
            "(a diverged training run, or an overflow in float16); its output would be garbage, so none is returned"
        )


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


# ------------------------------------------------------------------------------- the length head (shared)
def length_classes(config, target_lengths: torch.Tensor, source_lengths: torch.Tensor) -> torch.Tensor:
    """Length-predictor class of each target length (clipped to the representable range)."""
    if config.length_prediction_mode == "offset":
        offset = config.max_length_offset
        return (target_lengths - source_lengths + offset).clamp(0, 2 * offset)
    return target_lengths.clamp(0, config.max_target_positions)


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


class LengthHeadMethod(NATMethod):
    """Shared by the methods whose decoder length is predicted: a linear length classifier on the mean of the
    non-padding encoder states (`model.length_predictor`), its cross-entropy added to the token loss with
    `config.length_loss_weight`. Subclasses implement `token_loss`."""

    predicts_target_positions = True

    def heads(self, config) -> dict[str, nn.Module]:
        return {"length_predictor": nn.Linear(config.d_model, config.num_length_classes)}

    def length_logits(self, backbone, encoder_hidden_states: torch.Tensor, attention_mask: torch.Tensor
                      ) -> torch.Tensor:
        """Length logits `[batch, num_length_classes]` from the mean of the non-padding encoder states."""
        mask = attention_mask[..., None].to(encoder_hidden_states.dtype)  # [batch, source_len, 1]
        pooled = (encoder_hidden_states * mask).sum(1) / mask.sum(1)  # [batch, d_model]
        return backbone.length_predictor(pooled)

    def head_outputs(self, backbone, encoder_hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        return {"length_logits": self.length_logits(backbone, encoder_hidden_states, attention_mask)}

    def token_loss(self, model, context, target: torch.Tensor, target_mask: torch.Tensor, step: int | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder logits trained on and the token loss."""
        raise NotImplementedError

    def loss(self, model, context, target: torch.Tensor, target_mask: torch.Tensor, step: int | None = None
             ) -> LossOutput:
        """`token + config.length_loss_weight * length`, terms named `token` and `length`."""
        config = model.config
        length_logits = self.length_logits(model.model, context.hidden_states, context.attention_mask)
        logits, token_loss = self.token_loss(model, context, target, target_mask, step)
        length_target = length_classes(config, target_mask.sum(-1), context.attention_mask.sum(-1))
        length_loss = F.cross_entropy(length_logits, length_target)
        total = token_loss + config.length_loss_weight * length_loss
        return LossOutput(total=total, terms={"token": token_loss, "length": length_loss}, logits=logits,
                          outputs={"length_logits": length_logits})

    def plan_lengths(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     encoder_hidden_states: torch.Tensor, length_beam: int, max_length: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder plan: the `length_beam` most probable target lengths `[batch, length_beam]`, and the
        length logits (checked for finiteness after decoding)."""
        length_logits = self.length_logits(model.model, encoder_hidden_states, attention_mask)
        empty_source = (attention_mask & (input_ids != model.config.eos_token_id)).sum(-1) == 0  # [batch]
        lengths = length_candidates(
            length_logits, attention_mask.sum(-1), empty_source, model.config, length_beam, max_length
        )
        return lengths, length_logits

    def plan_candidates(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, length_beam: int,
                        max_length: int, forced_lengths: torch.Tensor | None = None) -> tuple:
        """The encoder once, then one row per (sentence, length candidate): the lengths `[batch x length_beam]`
        (`plan_lengths`, or `forced_lengths` `[batch]` repeated), the length logits (None when forced) and the
        encoder context repeated per candidate (cross-attention keys precomputed once, shared)."""
        encoder_hidden_states = model.model.encode(input_ids, attention_mask)
        if forced_lengths is None:
            lengths, length_logits = self.plan_lengths(model, input_ids, attention_mask, encoder_hidden_states,
                                                       length_beam, max_length)  # [batch, length_beam]
        else:
            lengths, length_logits = forced_lengths[:, None].expand(-1, length_beam), None
        context = model.model.make_context(
            input_ids, attention_mask, encoder_hidden_states, precompute_cross_attention=True
        ).repeat_rows(length_beam)
        return lengths.flatten(), length_logits, context

    def timing_pass(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One encoder pass, the length prediction, and one decoder pass with output projection on `<mask>`
        inputs of the predicted length; returns the argmax tokens."""
        hidden = model.model.encode(input_ids, attention_mask)
        length_logits = self.length_logits(model.model, hidden, attention_mask)
        empty = torch.zeros(attention_mask.shape[0], dtype=torch.bool, device=attention_mask.device)
        lengths = length_candidates(length_logits, attention_mask.sum(-1), empty, model.config, 1,
                                    model.config.max_target_positions).squeeze(-1)
        target_len = int(lengths.max())
        target_mask = torch.arange(target_len, device=lengths.device)[None, :] < lengths[:, None]
        context = model.model.make_context(input_ids, attention_mask, hidden)
        return self.one_pass_logits(model, context, target_mask).argmax(-1)

    def one_pass_logits(self, model, context, target_mask: torch.Tensor) -> torch.Tensor:
        """The one-pass output distribution at target positions of given lengths: `[rows, target_len, vocab]`
        logits of one decoder pass with nothing observed (`<mask>` inputs, or the copied source in `"copy"`
        mode). `target_mask` `[rows, target_len]` bool marks each row's positions."""
        decoder_input_ids = torch.full(target_mask.shape, model.config.mask_token_id, device=target_mask.device)
        return model.decoder_logits(decoder_input_ids, target_mask, context)
