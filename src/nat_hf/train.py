"""Train a NAT model with Accelerate: `nat-hf train CONFIG.yaml [section.key=value ...] [--resume]`.

Reads top to bottom like accelerate's complete example: config -> data -> model -> optimiser -> loop with
periodic evaluation (validation loss, sacreBLEU/chrF of decoded output) and checkpoints. Two kinds of
checkpoint are written under `run.output_dir`:

- `checkpoints/last/`: the full training state (model, optimiser, scheduler, RNG, data position) for `--resume`;
- `best/`: the model with the best validation BLEU as a complete `save_pretrained` directory (weights, config,
  generation config, tokenizer, training config), ready for `from_pretrained` or the Hub.

Both are written to a temporary directory first and swapped in by renaming, so a killed run never leaves a
half-written checkpoint in place of a good one. At each evaluation the training state is saved before `best/`, and
`--resume` rewrites a `best/` that a kill left behind the restored state; a run killed before its first checkpoint
is restarted from step 0 by `--resume` (its partial outputs are removed first). Multi-process: `torchrun
--nproc_per_node 2 -m nat_hf.train ...` (or `accelerate launch --multi_gpu --num_processes 2 ...`; on CPU,
`accelerate launch --cpu --num_processes 2` silently starts one process).

With `adversarial: {enabled: true, ...}` a trained NAT model (`model.init_from`) continues as the generator of a GAN
against a discriminator trained in turn on each batch (`nat_hf.adversarial`); checkpoints then hold both models and
both optimisers, and `best_discriminator/` sits beside `best/`.

Everything that can be checked from the config and the data is checked before anything is written: config
values and the model architecture (`ConfigError` naming the key), every split including `data.test_splits`
(`DataError` naming the file). Then the run directory is locked (`run.lock`, an `flock` held by the global rank-0
process for the whole run and released by the OS when it dies), so a second run or a `--resume` into a directory
in use stops with a `ConfigError` before touching it.
"""

import argparse
import contextlib
import dataclasses
import fcntl
import json
import math
import os
import re
import shutil
import sys
import time
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import torch
import yaml

from .adversarial import (
    DISCRIMINATOR_DIR,
    AdversarialArgs,
    build_discriminator,
    check_generator,
    discriminator_term,
    excluded_token_ids,
    generator_sample,
    generator_term,
)
from .configuration_nat import NATConfig
from .data import DataCollatorForNAT, DataError, load_split, token_budget_batches, tokenize_split
from .inference import output_limit, translate_texts
from .methods import METHODS
from .modeling_nat import NATForConditionalGeneration
from .tokenization import config_kwargs_from_tokenizer, train_tokenizer

DATA_DIR_ENV = "NAT_HF_DATA_DIR"


class ConfigError(ValueError):
    """An invalid training configuration, found before any training step."""


# ------------------------------------------------------------------------------------------------------ config
MODEL_FAMILIES = ("nat", "ar")


@dataclass
class ModelArgs:
    """Architecture and objective (see `NATConfig` for each field), or a saved NAT model to start from.

    `family: ar` trains an autoregressive baseline of the same shape instead (a transformers `MarianMTModel`,
    post-norm, sinusoidal positions, shared and tied embeddings) through the same data path; the NAT-only
    fields are then unused."""

    family: str = "nat"
    init_from: str | None = None  # a saved NAT model directory to continue from (its architecture is kept)
    init_from_ar: str | None = None  # an AR encoder-decoder (dir or repo id) whose matching weights start the NAT
    d_model: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    attention_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    activation_function: str = "gelu"
    normalize_before: bool = False
    position_embedding_type: str = "learned"
    max_source_positions: int = 256
    max_target_positions: int = 256
    objective: str = "cmlm"
    decoder_input_mode: str = "mask"
    length_prediction_mode: str = "offset"
    max_length_offset: int = 64
    length_loss_weight: float = 0.1
    label_smoothing: float = 0.1
    # the method's training options (`NATConfig.method_options`, e.g. a glancing schedule or an upsampling ratio;
    # see `TrainingOptions` in method_<objective>.py): unknown keys and bad values are a ConfigError
    method_options: dict = field(default_factory=dict)
    # where the blank token (ctc) comes from: "tokenizer" (its `<blank>`, if it has one) or "append" (a new token
    # after the tokenizer's vocabulary: blank_token_id = len(tokenizer), vocab_size = len(tokenizer) + 1; for a
    # vocabulary without one, e.g. an AR teacher's: `init_from_ar` copies the teacher's rows, the new row keeps
    # its fresh initialisation)
    blank_token: str = "tokenizer"


BLANK_TOKEN_SOURCES = ("tokenizer", "append")


@dataclass
class DataArgs:
    """Where the parallel data comes from and how it is tokenised and batched."""

    data_dir: str | None = None  # `{split}.{lang}` text files or `{split}.jsonl`; default: $NAT_HF_DATA_DIR
    eval_data_dir: str | None = None  # where the validation and test splits are, if not in data_dir
    dataset_name: str | None = "bentrevett/multi30k"  # Hub dataset, used when no data directory is given
    source_lang: str = "en"
    target_lang: str = "de"
    train_split: str = "train"
    valid_split: str = "val"
    test_splits: list[str] = field(default_factory=list)  # decoded with the best model at the end
    tokenizer: str | None = None  # a saved tokenizer; None trains one on the training data
    vocab_size: int = 8000  # for a trained tokenizer
    tokenizer_algorithm: str = "unigram"
    max_tokens: int = 4096  # padded source+target tokens per batch (per process)


@dataclass
class OptimArgs:
    learning_rate: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    weight_decay: float = 0.01
    scheduler: str = "inverse_sqrt"  # any `transformers.get_scheduler` name
    warmup_steps: int = 4000
    max_steps: int = 300_000
    max_minutes: float | None = None  # stop (then evaluate and save) after this much training time
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # "no", "fp16", "bf16"
    seed: int = 1


@dataclass
class EvalArgs:
    """Evaluation. `decoding` and `final_decoding` are the model's decoding options (its method's `Options`, e.g.
    cmlm's `num_iterations`, `length_beam`; family ar: `num_beams`), each over the method's defaults (`{}`: the
    defaults; family ar: 1 beam periodic, 4 final), validated by the method when the config is checked."""

    eval_every: int = 1000  # optimiser steps between evaluations (and checkpoints)
    decoding: dict = field(default_factory=dict)  # the periodic validation BLEU that picks the best checkpoint
    max_sentences: int | None = None  # periodic BLEU on the first N validation sentences only, for speed
    # the final evaluation (whole validation set and test splits), also saved as the best model's generation
    # defaults
    final_decoding: dict = field(default_factory=dict)
    batch_size: int = 50  # sentences per generate call
    average_last: int = 0  # if >= 2: also average the weights of the last N evaluated checkpoints into averaged/


# Evaluation keys of earlier versions and what replaced them (a config that still sets one is a ConfigError).
REPLACED_EVAL_KEYS = {"num_iterations": "eval.decoding.num_iterations", "length_beam": "eval.decoding.length_beam",
                      "num_beams": "eval.decoding.num_beams",
                      "final_num_iterations": "eval.final_decoding.num_iterations",
                      "final_length_beam": "eval.final_decoding.length_beam",
                      "final_num_beams": "eval.final_decoding.num_beams"}
# Decoding options of the AR family (transformers' beam search) and their defaults, periodic and final.
AR_DECODING_DEFAULTS = {False: {"num_beams": 1}, True: {"num_beams": 4}}


@dataclass
class RunArgs:
    output_dir: str = "runs/nat"
    log_every: int = 50
    threads: int | None = None  # torch CPU threads per process; None keeps torch's default
    # optimiser steps between saves of the training state (for --resume) without an evaluation; None: only at
    # evaluations (eval.eval_every). Lets a slow run lose few updates when killed without evaluating more often.
    checkpoint_every: int | None = None


@dataclass
class TrainConfig:
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    optim: OptimArgs = field(default_factory=OptimArgs)
    eval: EvalArgs = field(default_factory=EvalArgs)
    run: RunArgs = field(default_factory=RunArgs)
    # adversarial training (nat_hf.adversarial): off unless `adversarial.enabled`
    adversarial: AdversarialArgs = field(default_factory=AdversarialArgs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Keys that may differ between a run and its resumption: they change neither what was trained so far nor how the
# best checkpoint is chosen (the run directory itself may be renamed, moved or spelt differently; the test splits
# and the final decoding only concern the final evaluation).
RESUMABLE_CHANGES = {("optim", "max_steps"), ("optim", "max_minutes"), ("run", "log_every"), ("run", "threads"),
                     ("run", "checkpoint_every"),
                     ("run", "output_dir"), ("eval", "batch_size"), ("data", "test_splits"),
                     ("eval", "final_decoding")}
# A YAML 1.1 float without a dot (`5e-4`, `1E3`) is read as a string; these are accepted where a float is expected.
FLOAT_STRING = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
# NATConfig fields that a ModelArgs key sets under another name.
NAT_FIELD_TO_KEY = {"encoder_attention_heads": "attention_heads", "decoder_attention_heads": "attention_heads",
                    "encoder_ffn_dim": "ffn_dim", "decoder_ffn_dim": "ffn_dim"}


def _coerce(value: Any, annotation, where: str) -> Any:
    """Check (and for ints given to floats, convert) one YAML value against its dataclass annotation."""
    options = get_args(annotation) if get_origin(annotation) in (types.UnionType, typing.Union) else ()
    if options:
        if value is None and type(None) in options:
            return None
        annotation = next(option for option in options if option is not type(None))
    if annotation is dict or get_origin(annotation) is dict:
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            raise ConfigError(f"{where} must be a mapping of names to values, got {value!r}")
        return dict(value)
    if get_origin(annotation) is list:
        (item_type,) = get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(item, item_type, f"{where}[]") for item in value]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str) and FLOAT_STRING.fullmatch(value.strip()):
        value = float(value)
    if annotation is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    if annotation in (int, float, str, bool) and not (isinstance(value, annotation)
                                                      and not (annotation is int and isinstance(value, bool))):
        raise ConfigError(f"{where} must be {annotation.__name__}, got {value!r}")
    return value


def build_config(values: dict) -> TrainConfig:
    """`TrainConfig` from nested dicts; unknown sections or keys and ill-typed values raise `ConfigError`."""
    sections = {}
    hints = get_type_hints(TrainConfig)
    for section, section_values in (values or {}).items():
        if section not in hints:
            raise ConfigError(f"unknown config section {section!r} (known: {sorted(hints)})")
        section_class = hints[section]
        known = {f.name: f for f in dataclasses.fields(section_class)}
        section_hints = get_type_hints(section_class)
        if not isinstance(section_values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        replaced = [key for key in section_values if section == "eval" and key in REPLACED_EVAL_KEYS]
        if replaced:
            raise ConfigError("; ".join(f"eval.{key} was replaced by {REPLACED_EVAL_KEYS[key]}" for key in replaced)
                              + " (eval.decoding: the periodic validation's decoding options, eval.final_decoding: "
                              "the final evaluation's)")
        unknown = sorted(set(section_values) - set(known))
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in config section {section!r} (known: {sorted(known)})")
        sections[section] = section_class(**{
            key: _coerce(value, section_hints[key], f"{section}.{key}") for key, value in section_values.items()
        })
    config = TrainConfig(**sections)
    # before the model check, which builds a NATConfig from them
    if config.model.blank_token not in BLANK_TOKEN_SOURCES:
        raise ConfigError(f"model.blank_token must be one of {BLANK_TOKEN_SOURCES}, got {config.model.blank_token!r}")
    if config.model.family == "ar" and config.model.method_options:
        raise ConfigError("model.method_options needs family nat (they are a NAT method's training options)")
    if config.model.family == "ar" and config.model.blank_token != "tokenizer":
        raise ConfigError("model.blank_token: append needs family nat")
    check_model_args(config.model)  # an invalid model is the problem to name, not the evaluation it implies
    validate_config(config)
    return config


def check_model_args(args: ModelArgs) -> None:
    """Build the `NATConfig` the model section describes (with a stand-in vocabulary: the real one comes with the
    tokenizer) so that an invalid architecture or objective is a `ConfigError` naming its key, before training.
    The AR family shares the shape fields, so the same check covers it."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers.activations import ACT2FN

    if args.activation_function not in ACT2FN:
        raise ConfigError(f"model.activation_function must be one of {sorted(ACT2FN)}, "
                          f"got {args.activation_function!r}")
    try:
        stand_in_nat_config(args)
    except (ValueError, StrictDataclassError) as error:
        raise ConfigError(model_error_message(error)) from None


def model_error_message(error: Exception) -> str:
    """A `NATConfig` error as a config message naming the model key (`model.method_options...` for a method
    option)."""
    message = str(error)
    if "method_options" in message:
        rest = message.split("method_options", 1)[1]
        names = [quoted or ticked for quoted, ticked in re.findall(r"'(\w+)'|`(\w+)`", rest)]
        names = names or re.findall(r"^\s+(\w+) must", rest)  # "method_options NAME must be ..."
        return f"model.method_options.{names[0]}: {message}" if names else f"model.method_options: {message}"
    named = re.findall(r"`(\w+)`", message)
    key = NAT_FIELD_TO_KEY.get(named[0], named[0]) if named else None
    if key == "blank_token_id":
        key = "blank_token"
    return f"model.{key}: {message}" if key else f"model: {message}"


def stand_in_nat_config(args: ModelArgs) -> NATConfig:
    """The `NATConfig` of the model section with a stand-in vocabulary (the real one comes with the tokenizer):
    8000 entries with `train_tokenizer`'s special ids (pad 0, eos 1, unk 2, mask 3, blank 4), or with
    `blank_token: append`, 8001 with the blank last."""
    vocabulary = ({"vocab_size": 8001, "blank_token_id": 8000} if args.blank_token == "append"
                  else {"vocab_size": 8000, "blank_token_id": 4})
    return NATConfig(**nat_architecture(args), **vocabulary)


def validate_config(config: TrainConfig) -> None:
    """Every value checked on its own and against the others; the first problem is a `ConfigError` naming its
    key. Counts that would otherwise only fail after training started (batch sizes, logging interval, ...)
    are checked here too."""
    from transformers import SchedulerType

    schedulers = [scheduler.value for scheduler in SchedulerType]
    checks = [
        (config.data.max_tokens >= 1, "data.max_tokens must be >= 1"),
        (config.data.vocab_size >= 6, "data.vocab_size must exceed the 5 special tokens"),
        (bool(config.data.train_split) and bool(config.data.valid_split),
         "data.train_split and data.valid_split must be non-empty"),
        (all(config.data.test_splits), "data.test_splits entries must be non-empty"),
        (config.optim.learning_rate > 0, "optim.learning_rate must be > 0"),
        (config.optim.max_steps >= 1, "optim.max_steps must be >= 1"),
        (config.optim.max_minutes is None or config.optim.max_minutes > 0, "optim.max_minutes must be > 0"),
        (config.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
        (config.optim.gradient_accumulation_steps >= 1, "optim.gradient_accumulation_steps must be >= 1"),
        (len(config.optim.betas) == 2, "optim.betas must hold two numbers"),
        (all(0 <= beta < 1 for beta in config.optim.betas), "optim.betas must lie in [0, 1)"),
        (config.optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (config.optim.max_grad_norm > 0, "optim.max_grad_norm must be > 0"),
        (config.optim.scheduler in schedulers, f"optim.scheduler must be one of {schedulers}"),
        (config.optim.mixed_precision in ("no", "fp16", "bf16"), "optim.mixed_precision must be no, fp16 or bf16"),
        (config.eval.eval_every >= 1, "eval.eval_every must be >= 1"),
        (config.run.checkpoint_every is None or config.run.checkpoint_every >= 1,
         "run.checkpoint_every must be >= 1 (or null: checkpoints only at evaluations)"),
        (config.eval.max_sentences is None or config.eval.max_sentences >= 1, "eval.max_sentences must be >= 1"),
        (config.eval.batch_size >= 1, "eval.batch_size must be >= 1"),
        (config.eval.average_last == 0 or config.eval.average_last >= 2,
         "eval.average_last must be 0 (off) or >= 2"),
        (config.run.log_every >= 1, "run.log_every must be >= 1"),
        (config.run.threads is None or config.run.threads >= 1, "run.threads must be >= 1"),
        (bool(config.run.output_dir), "run.output_dir must be non-empty"),
        (config.model.family in MODEL_FAMILIES, f"model.family must be one of {MODEL_FAMILIES}"),
        (config.model.family == "nat" or config.model.init_from_ar is None, "model.init_from_ar needs family nat"),
        (config.model.init_from is None or config.model.init_from_ar is None,
         "model.init_from and model.init_from_ar exclude each other"),
        (config.data.tokenizer_algorithm in ("unigram", "bpe"), "data.tokenizer_algorithm must be unigram or bpe"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    check_adversarial_args(config)
    if config.model.family == "ar":
        check_decoding_options(config)
    elif config.model.init_from is None:  # a saved model's method is checked by `check_init_from`
        check_decoding_options(config, stand_in_nat_config(config.model))


def check_adversarial_args(config: TrainConfig) -> None:
    """The `adversarial` section on its own (`AdversarialArgs.validate`) and, when enabled, against the rest: it
    continues a trained NAT model (`model.init_from`; its method is checked by `check_init_from`) one batch per
    update."""
    try:
        config.adversarial.validate()
    except ValueError as error:
        raise ConfigError(f"adversarial.{error}") from None
    if not config.adversarial.enabled:
        return
    if config.model.family != "nat":
        raise ConfigError("adversarial.enabled needs model.family nat (the generator is a NAT model)")
    if config.model.init_from is None:
        raise ConfigError("adversarial.enabled: adversarial training starts from a trained NAT model; set "
                          "model.init_from to its directory")
    if config.optim.gradient_accumulation_steps != 1:
        raise ConfigError("adversarial.enabled needs optim.gradient_accumulation_steps 1 (the two models update in "
                          "turn on each batch)")


def check_decoding_options(config: TrainConfig, model_config: NATConfig | None = None) -> None:
    """The evaluation decoding options (`eval.decoding`, `eval.final_decoding`) checked at YAML time by the
    method of `model_config` (its `check_options`, the validation `generate` runs; family ar: `num_beams` only): a
    `ConfigError` naming the `eval.` key instead of a failure at the first evaluation, after training."""
    for section in ("decoding", "final_decoding"):
        given = getattr(config.eval, section)
        if model_config is None:  # family ar
            unknown = sorted(set(given) - set(AR_DECODING_DEFAULTS[False]))
            if unknown:
                raise ConfigError(f"eval.{section}.{unknown[0]}: not a decoding option of family ar (its options: "
                                  f"{sorted(AR_DECODING_DEFAULTS[False])})")
            beams = given.get("num_beams", 1)
            if isinstance(beams, bool) or not isinstance(beams, int) or beams < 1:
                raise ConfigError(f"eval.{section}.num_beams must be an integer >= 1, got {beams!r}")
            continue
        method = METHODS[model_config.objective]
        try:
            method.check_options(model_config, {**method.option_defaults(), **given})
        except ValueError as error:
            named = [name for name in given if re.search(rf"\b{name}\b", str(error))]
            named = named or [name for name in method.option_defaults() if re.search(rf"\b{name}\b", str(error))]
            key = f"eval.{section}.{named[0]}" if named else f"eval.{section}"
            raise ConfigError(f"{key}: {error}") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config and apply `section.key=value` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        values = yaml.safe_load(os.path.expandvars(path.read_text(encoding="utf-8"))) or {}  # ${NAT_HF_DATA_DIR}...
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid UTF-8 YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(values).__name__}")
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or key.count(".") not in (1, 2):
            raise ConfigError(f"override {override!r} must look like section.key=value (or section.key.option=value "
                              "for a mapping such as eval.decoding)")
        section, name, *option = key.split(".")
        try:
            value = yaml.safe_load(os.path.expandvars(raw))
        except yaml.YAMLError as error:
            raise ConfigError(f"override {override!r}: the value is not valid YAML: {error}") from None
        if not isinstance(values.setdefault(section, {}), dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        if option:  # one entry of a mapping, e.g. eval.decoding.num_iterations=1
            if not isinstance(values[section].setdefault(name, {}), dict):
                raise ConfigError(f"override {override!r}: {section}.{name} is not a mapping")
            values[section][name][option[0]] = value
        else:
            values[section][name] = value
    return build_config(values)


def ar_config(args: ModelArgs, tokenizer):
    """A Marian-architecture AR model config of the same shape as the NAT one."""
    from transformers import MarianConfig

    return MarianConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id, forced_eos_token_id=tokenizer.eos_token_id,
        d_model=args.d_model, encoder_layers=args.encoder_layers, decoder_layers=args.decoder_layers,
        encoder_attention_heads=args.attention_heads, decoder_attention_heads=args.attention_heads,
        encoder_ffn_dim=args.ffn_dim, decoder_ffn_dim=args.ffn_dim, dropout=args.dropout,
        attention_dropout=args.attention_dropout, activation_dropout=args.activation_dropout,
        activation_function=args.activation_function, scale_embedding=True,
        max_position_embeddings=max(args.max_source_positions, args.max_target_positions + 1),
        share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
    )


@dataclass
class StepLoss:
    """A batch's training loss with what the training log records of it."""

    loss: torch.Tensor  # [] the total optimised
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # the method's named loss terms, each []
    counts: dict[str, torch.Tensor] = field(default_factory=dict)  # events summed over the log window, each []


def training_step_loss(model, batch: dict, family: str, label_smoothing: float, step: int | None = None
                       ) -> StepLoss:
    """The batch-averaged training loss (see `training_loss`) with the NAT method's named terms (`LossOutput.terms`,
    e.g. `token`, `length`) and counts (`LossOutput.counts`, e.g. `skipped_targets`), as the model's forward
    returns them (`loss_terms` / `loss_counts`; a forward that only has `token_loss` / `length_loss` gives those
    as the terms). The AR family has no terms or counts."""
    if family == "nat":
        output = model(**batch, step=step)
        terms = getattr(output, "loss_terms", None)
        if terms is None:
            terms = {name: value for name, value in (("token", output.token_loss), ("length", output.length_loss))
                     if value is not None}
        return StepLoss(output.loss, dict(terms), dict(getattr(output, "loss_counts", None) or {}))
    return StepLoss(ar_training_loss(model, batch, label_smoothing))


def training_loss(model, batch: dict, family: str, label_smoothing: float, step: int | None = None
                  ) -> torch.Tensor:
    """The batch-averaged training loss: the NAT model's own (its method's, which sees the training `step`), or
    for an AR model the label-smoothed cross-entropy of teacher forcing over the non-padding target tokens."""
    return training_step_loss(model, batch, family, label_smoothing, step).loss


def ar_training_loss(model, batch: dict, label_smoothing: float) -> torch.Tensor:
    """Label-smoothed teacher-forcing cross-entropy of an AR model over the non-padding target tokens."""
    from transformers.models.marian.modeling_marian import shift_tokens_right

    config = model.config
    labels = batch["labels"].masked_fill(batch["labels"] == config.pad_token_id, -100)
    decoder_input_ids = shift_tokens_right(labels, config.pad_token_id, config.decoder_start_token_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=decoder_input_ids).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                                             label_smoothing=label_smoothing)


def decoding_options(config: TrainConfig, final: bool, objective: str | None = None, model_config=None) -> dict:
    """`generate` arguments of the periodic (`final=False`, `eval.decoding`) or final (`eval.final_decoding`)
    evaluation: every decoding option of the model's method (`objective`, default `model.objective`; a model
    continued from `model.init_from` has its own), the config's values over the method's defaults. Family ar:
    `num_beams` (default 1 periodic, 4 final) and the length cap, `model.max_target_positions` + 1, or less for a
    model continued from `model.init_from` (given its `model_config`) whose position table is shorter."""
    given = config.eval.final_decoding if final else config.eval.decoding
    if config.model.family == "ar":
        cap = config.model.max_target_positions + 1
        if model_config is not None and config.model.init_from is not None:
            cap = min(cap, output_limit(model_config) - 1)
        return {**AR_DECODING_DEFAULTS[final], **given, "max_new_tokens": cap}
    return {**METHODS[objective or config.model.objective].option_defaults(), **given}


def nat_architecture(args: ModelArgs) -> dict:
    """The `NATConfig` arguments the model section sets (everything but the vocabulary and its special ids)."""
    return dict(
        d_model=args.d_model, encoder_layers=args.encoder_layers, decoder_layers=args.decoder_layers,
        encoder_attention_heads=args.attention_heads, decoder_attention_heads=args.attention_heads,
        encoder_ffn_dim=args.ffn_dim, decoder_ffn_dim=args.ffn_dim, dropout=args.dropout,
        attention_dropout=args.attention_dropout, activation_dropout=args.activation_dropout,
        activation_function=args.activation_function, normalize_before=args.normalize_before,
        position_embedding_type=args.position_embedding_type, max_source_positions=args.max_source_positions,
        max_target_positions=args.max_target_positions, objective=args.objective,
        decoder_input_mode=args.decoder_input_mode, length_prediction_mode=args.length_prediction_mode,
        max_length_offset=args.max_length_offset, length_loss_weight=args.length_loss_weight,
        label_smoothing=args.label_smoothing, method_options=dict(args.method_options),
    )


def vocabulary_kwargs(args: ModelArgs, tokenizer) -> dict:
    """The `NATConfig` vocabulary size and special ids for `tokenizer`; with `blank_token: append`, a blank token
    added after the tokenizer's vocabulary (id `len(tokenizer)`, one more row)."""
    kwargs = config_kwargs_from_tokenizer(tokenizer)
    if args.blank_token == "append":
        if kwargs["blank_token_id"] is not None:
            raise ConfigError(f"model.blank_token: append, but the tokenizer has a blank token (id "
                              f"{kwargs['blank_token_id']}); use model.blank_token: tokenizer")
        kwargs.update(blank_token_id=kwargs["vocab_size"], vocab_size=kwargs["vocab_size"] + 1)
    return kwargs


def nat_config(args: ModelArgs, tokenizer) -> NATConfig:
    """The `NATConfig` of the model section for `tokenizer`'s vocabulary; ConfigError naming the key."""
    try:
        return NATConfig(**vocabulary_kwargs(args, tokenizer), **nat_architecture(args))
    except ValueError as error:
        hint = (" (the tokenizer has no <blank>: set model.blank_token: append)"
                if "blank_token_id" in str(error) and args.blank_token == "tokenizer" and "append" not in str(error)
                else "")
        raise ConfigError(model_error_message(error) + hint) from None


# ------------------------------------------------------------------------------------------------ checkpoints
def replace_directory(staging: Path, final: Path) -> None:
    """Swap a fully written `staging` directory in for `final` by renames; the old one is removed last."""
    previous = final.with_name(final.name + ".previous")
    if previous.exists():
        shutil.rmtree(previous)
    if final.exists():
        final.rename(previous)
    staging.rename(final)
    if previous.exists():
        shutil.rmtree(previous)


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete training-state checkpoint (a swap interrupted after its first rename leaves the
    previous one as `last.previous`)."""
    for name in ("last", "last.previous"):
        candidate = output_dir / "checkpoints" / name
        if (candidate / "trainer_state.json").is_file():
            return candidate
    return None


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the weights in several `safetensors` snapshots (Vaswani et al., 2017, average the
    last checkpoints; a known BLEU gain for NAT models)."""
    from safetensors.torch import load_file

    total = None
    for path in paths:
        weights = load_file(path)
        if total is None:
            total = {name: tensor.double() for name, tensor in weights.items()}
        elif weights.keys() != total.keys():
            raise ValueError(f"{path} holds different tensors from {paths[0]}")
        else:
            for name, tensor in weights.items():
                total[name] += tensor.double()
    return {name: (tensor / len(paths)).float() for name, tensor in total.items()}


def config_differences(saved: dict, current: dict) -> list[str]:
    """`section.key: old -> new` for every value that may not change on `--resume` (see `RESUMABLE_CHANGES`). A
    config saved by an earlier version is read as this version would: a key it lacks has its default, and its
    evaluation keys move to `eval.decoding` / `eval.final_decoding` (`REPLACED_EVAL_KEYS`)."""
    saved = upgrade_saved_config(saved)
    defaults = TrainConfig().to_dict()
    differences = []
    for section, values in current.items():
        for key, value in values.items():
            old = saved.get(section, {}).get(key, defaults[section][key])
            if (section, key) not in RESUMABLE_CHANGES and old != value:
                differences.append(f"{section}.{key}: {old!r} -> {value!r}")
    return differences


def upgrade_saved_config(saved: dict) -> dict:
    """A saved training config with the evaluation keys of earlier versions (`num_iterations`, `final_length_beam`,
    ...: all saved, defaults included) rewritten as `eval.decoding` / `eval.final_decoding` of its model family."""
    old_eval = dict(saved.get("eval") or {})
    if not set(old_eval) & set(REPLACED_EVAL_KEYS):
        return saved
    family = (saved.get("model") or {}).get("family", "nat")
    used = ("num_beams",) if family == "ar" else ("num_iterations", "length_beam")
    eval_values = {key: value for key, value in old_eval.items() if key not in REPLACED_EVAL_KEYS}
    eval_values["decoding"] = {name: old_eval[name] for name in used if name in old_eval}
    eval_values["final_decoding"] = {name: old_eval[f"final_{name}"] for name in used if f"final_{name}" in old_eval}
    return {**saved, "eval": eval_values}


# ------------------------------------------------------------------------------------------------ run directory
RUN_LOCK = "run.lock"
# What a run writes under run.output_dir (besides train_config.yaml, the lock and the content-keyed token cache).
RUN_OUTPUTS = ("log.jsonl", "results.json", "best", "best.staging", "best.previous", "checkpoints", "snapshots",
               "averaged", "averaged.staging", "averaged.previous", "init_from_ar.json", "tokenizer",
               "tokenizer.staging", "tokenizer.previous", "nat", DISCRIMINATOR_DIR, f"{DISCRIMINATOR_DIR}.staging",
               f"{DISCRIMINATOR_DIR}.previous")
# The outputs that show a run did work there (a fresh start into such a directory is refused).
RUN_STARTED = ("log.jsonl", "results.json", "best", "checkpoints", "snapshots", "averaged")


def is_global_main_process() -> bool:
    """Rank 0 of a torchrun/accelerate launch (or a single process), known before the process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def run_lock(output_dir: Path, hold: bool = True) -> Iterator[None]:
    """Hold an exclusive `flock` on `output_dir/run.lock` for the duration, or raise `ConfigError` at once if
    another process holds it. The OS releases the lock when the holder exits, however it exits (kill -9
    included), so no stale lock is ever left. With several processes only the global rank 0 holds it
    (`hold=False` elsewhere): if rank 0 cannot, it stops, and the launcher stops the others."""
    if not hold:
        yield
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    lock_path = output_dir / RUN_LOCK
    handle = lock_path.open("a")  # never truncated or written: the file only carries the lock
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(f"{output_dir} is in use by another training run (it holds {lock_path}); wait for it to "
                          "finish or choose another run.output_dir") from None
    try:
        yield
    finally:
        handle.close()


def check_run_directory(config: TrainConfig, output_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from, or None to start at step 0; `ConfigError` (before anything is written) when
    a fresh start would mix with an earlier run, or `--resume` finds no run or a different config."""
    checkpoint = last_checkpoint(output_dir)
    config_path = output_dir / "train_config.yaml"
    if resume:
        if not config_path.is_file():
            raise ConfigError(f"--resume: there is no run under {output_dir} (no train_config.yaml)")
        saved = yaml.safe_load(config_path.read_text()) or {}
        differences = config_differences(saved, config.to_dict())
        if differences:
            raise ConfigError(f"--resume: {output_dir} was trained with a different config: {differences}")
        # No checkpoint but a finished run or a best model saved by this version (always after a checkpoint): the
        # checkpoints were removed, not lost to a kill. A restart would delete a trained model: refuse.
        trained = [name for name in ("results.json", "averaged", f"best/{BEST_MARKER}") if (output_dir / name).exists()]
        if checkpoint is None and trained:
            raise ConfigError(f"--resume: {output_dir} has no checkpoint to continue from (checkpoints/ was removed) "
                              f"but holds a trained model ({', '.join(trained)}); restarting would delete it: train "
                              "into another run.output_dir")
        return checkpoint
    started = [name for name in RUN_STARTED if (output_dir / name).exists()]
    if checkpoint is not None or started:
        raise ConfigError(f"{output_dir} already holds a run ({', '.join(started)}); pass --resume to continue it "
                          "(a run killed before its first checkpoint restarts from step 0) or choose another "
                          "run.output_dir")
    return None


def clear_run_outputs(output_dir: Path) -> list[str]:
    """Remove what an earlier, unfinished run left that a run starting at step 0 would otherwise mix with (its
    log, best model, snapshots, trained tokenizer, TensorBoard events...); return the names removed."""
    removed = []
    for name in RUN_OUTPUTS:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    for path in sorted(output_dir.glob("*.hyp.*")):
        path.unlink()
        removed.append(path.name)
    return removed


def drop_tied_weights(models: list, weights: list[dict], output_dir: str) -> None:
    """`Accelerator.register_save_state_pre_hook` hook: leave the tied copies (`lm_head.weight`, ... as the model's
    tied-weights keys name them) out of the saved state dicts. They share storage with their source, which
    safetensors cannot store twice (accelerate would drop them itself and warn at every checkpoint); loading ties
    them back, as `from_pretrained` does."""
    for model, state_dict in zip(models, weights, strict=True):
        unwrapped = getattr(model, "module", model)
        tied = getattr(unwrapped, "all_tied_weights_keys", None) or getattr(unwrapped, "_tied_weights_keys", None)
        prefix = "module." if unwrapped is not model else ""
        for target, source in dict(tied or {}).items():
            target, source = prefix + target, prefix + source
            if (target in state_dict and source in state_dict
                    and state_dict[target].data_ptr() == state_dict[source].data_ptr()):
                del state_dict[target]


def progress_budget(step: int, train_seconds: float, max_steps: int, max_minutes: float | None) -> tuple[float, float]:
    """(done, total) of the budget that ends training first, for the progress bar: steps when there is no time
    budget; otherwise training seconds, out of the time budget or, when the steps run out sooner at the rate so
    far, the seconds those steps will take."""
    if max_minutes is None:
        return step, max_steps
    total = 60 * max_minutes
    if step > 0 and train_seconds > 0:
        total = min(total, train_seconds / step * max_steps)
    return min(train_seconds, total), total


def summary_line(summary: dict, config: TrainConfig, output_dir: Path) -> str:
    """The line printed at the end of training: the final validation (and test) scores of the best model."""
    valid = config.data.valid_split
    parts = [f"{valid} BLEU {summary[f'{valid}_bleu']:.2f} chrF {summary[f'{valid}_chrf']:.2f} "
             f"(best step {summary['best_step']} of {summary['steps']})"]
    parts += [f"{split} BLEU {summary[f'{split}_bleu']:.2f} chrF {summary[f'{split}_chrf']:.2f}"
              for split in config.data.test_splits]
    if "averaged_" + valid + "_bleu" in summary:
        parts.append(f"averaged {valid} BLEU {summary[f'averaged_{valid}_bleu']:.2f}")
    return "final: " + "; ".join(parts) + f"; model in {output_dir / 'best'}"


# -------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def validation_loss(model, dataset, collator, batches: list[list[int]], seed: int, family: str = "nat",
                    label_smoothing: float = 0.0) -> float:
    """Token-weighted mean loss over the validation batches, with CMLM masks drawn from a fixed seed (so values
    are comparable across evaluations) without touching the training RNG."""
    model.eval()
    device = next(model.parameters()).device
    total, weight = 0.0, 0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for indices in batches:
            batch = {key: value.to(device) for key, value in collator([dataset[i] for i in indices]).items()}
            labels = batch["labels"]
            tokens = int(((labels != model.config.pad_token_id) & (labels != model.config.eos_token_id)).sum())
            total += training_loss(model, batch, family, label_smoothing).item() * tokens
            weight += tokens
    model.train()
    return total / max(weight, 1)


def decode_and_score(model, tokenizer, sources, references, batch_size: int, metric, **generate_kwargs) -> dict:
    model.eval()
    start = time.perf_counter()
    hypotheses = translate_texts(model, tokenizer, sources, batch_size, truncation=True, **generate_kwargs)
    scores = metric.compute(predictions=hypotheses, references=references)
    model.train()
    return {"bleu": scores["bleu"], "chrf": scores["chrf"], "signature": scores["signature"],
            "decode_seconds": time.perf_counter() - start, "hypotheses": hypotheses}


# ------------------------------------------------------------------------------------------------------ training
def prepare_tokenizer(config: TrainConfig, output_dir: Path, accelerator):
    from transformers import AutoTokenizer

    if config.data.tokenizer is not None:
        return AutoTokenizer.from_pretrained(config.data.tokenizer)
    for model_dir in (config.model.init_from, config.model.init_from_ar):
        if model_dir is not None:
            return AutoTokenizer.from_pretrained(model_dir)
    tokenizer_dir = output_dir / "tokenizer"
    if accelerator.is_main_process and not (tokenizer_dir / "tokenizer.json").is_file():
        data_dir = Path(config.data.data_dir)
        files = [data_dir / f"{config.data.train_split}.{lang}"
                 for lang in (config.data.source_lang, config.data.target_lang)]
        tokenizer = train_tokenizer(files=files, vocab_size=config.data.vocab_size,
                                    algorithm=config.data.tokenizer_algorithm,
                                    model_max_length=config.model.max_source_positions)
        staging = output_dir / "tokenizer.staging"
        tokenizer.save_pretrained(staging)
        replace_directory(staging, tokenizer_dir)
    accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def build_model(config: TrainConfig, tokenizer):
    """The model to train, and the report of its initialisation from an AR model (if asked for)."""
    from transformers import AutoModelForSeq2SeqLM, MarianMTModel

    if config.model.init_from is not None and config.model.init_from_ar is not None:
        raise ConfigError("model.init_from and model.init_from_ar exclude each other")
    report = None
    if config.model.init_from is not None:
        model = AutoModelForSeq2SeqLM.from_pretrained(config.model.init_from)
    elif config.model.family == "ar":
        model = MarianMTModel(ar_config(config.model, tokenizer))
    else:
        model = NATForConditionalGeneration(nat_config(config.model, tokenizer))
        if config.model.init_from_ar is not None:
            from .ar_init import init_from_ar

            report = init_from_ar(model, config.model.init_from_ar)
    expected = config_kwargs_from_tokenizer(tokenizer)
    if config.model.family == "ar":
        expected = {key: expected[key] for key in ("vocab_size", "pad_token_id", "eos_token_id")}
    elif (config.model.blank_token == "append" if config.model.init_from is None else
          expected["blank_token_id"] is None and model.config.blank_token_id == len(tokenizer)):
        # a blank appended to the tokenizer's vocabulary (`model.blank_token: append`, or a saved model made so)
        expected.update(blank_token_id=len(tokenizer), vocab_size=len(tokenizer) + 1)
    mismatched = {key: (getattr(model.config, key, None), value) for key, value in expected.items()
                  if getattr(model.config, key, None) != value}
    if mismatched:
        raise ConfigError(f"the model config does not match the tokenizer (config, tokenizer): {mismatched}")
    objective = getattr(model.config, "objective", None)
    for name, value in decoding_options(config, final=True, objective=objective, model_config=model.config).items():
        setattr(model.generation_config, name, value)  # the saved model decodes like its final evaluation
    return model, report


BEST_MARKER = "best_step.json"  # in best/: the step and validation BLEU of the model saved there


def best_model_step(output_dir: Path) -> int | None:
    """The step of the model in `output_dir/best`, or None if there is none (or it predates the marker)."""
    marker = output_dir / "best" / BEST_MARKER
    return json.loads(marker.read_text())["step"] if marker.is_file() else None


def update_generation_defaults(model_dir: Path, options: dict) -> None:
    """Set a saved model's generation defaults to `options` (rewriting `generation_config.json` only if they
    differ)."""
    from transformers import GenerationConfig

    if not (model_dir / "generation_config.json").is_file():
        return
    generation_config = GenerationConfig.from_pretrained(model_dir)
    if all(getattr(generation_config, name, None) == value for name, value in options.items()):
        return
    for name, value in options.items():
        setattr(generation_config, name, value)
    generation_config.save_pretrained(model_dir)


def truncate_log(path: Path, step: int) -> None:
    """Keep only the log records up to `step` (those after it belong to training that `--resume` repeats), then
    note the resumption; the file is replaced by a rename, never left half-written. A line that is not JSON (torn
    by a kill or a full disk in the middle of a write) is dropped and counted in the `resume` record."""
    if not path.is_file():
        return
    records, skipped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            skipped += 1
    kept = [record for record in records if record.get("step", 0) <= step and record.get("event") != "end"]
    staging = path.with_name(path.name + ".staging")
    staging.write_text("".join(json.dumps(record) + "\n" for record in kept), encoding="utf-8")
    staging.rename(path)
    log_line(path, {"event": "resume", "step": step, "skipped_lines": skipped})


def log_line(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps({**record, "time": round(time.time(), 1)}) + "\n")


def apply_environment(config: TrainConfig) -> None:
    """Fill what the environment gives: the data directory from $NAT_HF_DATA_DIR when the config has none."""
    if config.data.data_dir is None and os.environ.get(DATA_DIR_ENV):
        config.data.data_dir = os.environ[DATA_DIR_ENV]


def check_init_from(config: TrainConfig) -> None:
    """The saved model that `model.init_from` names exists and can be evaluated as the config asks: its method
    checks `eval.decoding` and `eval.final_decoding` (e.g. more than one iteration for a one-pass `copy` decoder
    would otherwise fail at the first evaluation, after training)."""
    if config.model.init_from is None:
        return
    from transformers import AutoConfig

    try:
        saved = AutoConfig.from_pretrained(config.model.init_from)
    except (OSError, ValueError) as error:
        raise ConfigError(f"model.init_from: cannot read a model config from {config.model.init_from}: "
                          f"{error}") from None
    if config.adversarial.enabled:  # first: a generator that cannot be trained so makes its decoding moot
        from .method_base import methods_predicting_target_positions

        if not isinstance(saved, NATConfig) or not METHODS[saved.objective].predicts_target_positions:
            what = f"objective {saved.objective!r}" if isinstance(saved, NATConfig) else type(saved).__name__
            raise ConfigError(f"adversarial.enabled: the generator ({config.model.init_from}, {what}) must be a NAT "
                              "model whose decoder predicts target positions (methods "
                              f"{', '.join(methods_predicting_target_positions(METHODS))}); others output over "
                              "positions of their own (upsampled, or with blanks)")
    if isinstance(saved, NATConfig):
        check_decoding_options(config, saved)


def check_pretrained_sources(config: TrainConfig) -> None:
    """The tokenizer (`data.tokenizer`) and the AR model (`model.init_from_ar`) the config names can be read: a
    misspelt directory is a `ConfigError` naming the key before anything is written, not a traceback about Hub
    repo ids once the run has started."""
    from transformers import AutoConfig, AutoTokenizer

    for key, value, load in (("data.tokenizer", config.data.tokenizer, AutoTokenizer.from_pretrained),
                             ("model.init_from_ar", config.model.init_from_ar, AutoConfig.from_pretrained)):
        if value is None:
            continue
        try:
            load(value)
        except (OSError, ValueError) as error:
            where = "" if Path(value).exists() else " (no such directory, and not a Hub repo id that can be loaded)"
            raise ConfigError(f"{key}: cannot load {value!r}{where}: {str(error).splitlines()[0]}") from None
    tokenizer_source = config.data.tokenizer or config.model.init_from_ar
    if config.model.family == "nat" and config.model.init_from is None and tokenizer_source is not None:
        nat_config(config.model, AutoTokenizer.from_pretrained(tokenizer_source))  # e.g. a blank the vocabulary lacks


def load_splits(config: TrainConfig) -> dict:
    """Every split the run reads (training, validation and each test split) as `datasets.Dataset`s, read and
    checked up front so that a misspelt, missing or broken test split stops the run before training, not at
    its end."""
    eval_data_dir = config.data.eval_data_dir or config.data.data_dir
    splits = {}
    for name in [config.data.train_split, config.data.valid_split, *config.data.test_splits]:
        if name not in splits:
            directory = config.data.data_dir if name == config.data.train_split else eval_data_dir
            splits[name] = load_split(name, config.data.source_lang, config.data.target_lang, directory,
                                      config.data.dataset_name)
    return splits


def train(config: TrainConfig, resume: bool = False) -> dict:
    """Run the training described by `config`; return a summary (best validation scores, steps, seconds).

    The config, the data (every split) and the run directory are checked before anything is written; the run
    directory is locked for the whole run (see `run_lock`)."""
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    apply_environment(config)
    output_dir = Path(config.run.output_dir)
    check_init_from(config)
    check_pretrained_sources(config)
    splits = load_splits(config)
    if resume and not (output_dir / "train_config.yaml").is_file():  # checked again under the lock
        raise ConfigError(f"--resume: there is no run under {output_dir} (no train_config.yaml)")
    with run_lock(output_dir, hold=is_global_main_process()):
        checkpoint = check_run_directory(config, output_dir, resume)
        return run_training(config, output_dir, splits, checkpoint, restart=resume and checkpoint is None)


def run_training(config: TrainConfig, output_dir: Path, splits: dict, checkpoint: Path | None,
                 restart: bool = False) -> dict:
    """The training itself, once `train` has checked everything and holds the run directory: from step 0
    (`checkpoint` None; `restart`: a `--resume` of a run killed before its first checkpoint) or from
    `checkpoint`."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import AutoModelForSeq2SeqLM, get_scheduler

    from .metrics import load_sacrebleu

    resume = checkpoint is not None
    config_path = output_dir / "train_config.yaml"
    # Without cpu=True, accelerate ignores torchrun's WORLD_SIZE on a machine with no accelerator and every
    # process trains alone; with it, the processes form a gloo group (DistributedType.MULTI_CPU).
    accelerator = Accelerator(mixed_precision=config.optim.mixed_precision, log_with="tensorboard",
                              project_dir=str(output_dir), cpu=not torch.cuda.is_available())
    accelerator.register_save_state_pre_hook(drop_tied_weights)
    set_seed(config.optim.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            removed = clear_run_outputs(output_dir)
            if restart:
                accelerator.print(f"--resume: {output_dir} has no checkpoint (the run stopped before its first "
                                  f"one); restarting it from step 0 (removed {removed})")
        config_path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    accelerator.wait_for_everyone()

    # -- data (read and checked by `train`)
    tokenizer = prepare_tokenizer(config, output_dir, accelerator)
    model, init_report = build_model(config, tokenizer)
    objective = getattr(model.config, "objective", None)  # the NAT method (a model from init_from has its own)
    periodic_decoding = decoding_options(config, final=False, objective=objective, model_config=model.config)
    final_decoding = decoding_options(config, final=True, objective=objective, model_config=model.config)
    if init_report is not None and accelerator.is_main_process and not resume:
        (output_dir / "init_from_ar.json").write_text(json.dumps(init_report.to_dict(), indent=1))
        accelerator.print(init_report.summary())
    train_set = tokenize_split(splits[config.data.train_split], tokenizer, output_dir / "cache")
    valid_set = tokenize_split(splits[config.data.valid_split], tokenizer, output_dir / "cache")
    if config.model.family == "ar":  # labels keep </s>; the decoder also reads the start token
        limits = (model.config.max_position_embeddings, model.config.max_position_embeddings - 1)
    else:
        limits = (model.config.max_source_positions, model.config.max_target_positions + 1)
    for name, dataset in (("train", train_set), ("valid", valid_set)):
        too_long = sum(len(source) > limits[0] or len(target) > limits[1]
                       for source, target in zip(dataset["input_ids"], dataset["labels"], strict=True))
        if too_long:
            raise DataError(f"{too_long} {name} pair(s) exceed max_source_positions/max_target_positions "
                            f"{limits}; raise the limits or filter the data")
    train_lengths = [len(s) + len(t) for s, t in zip(train_set["input_ids"], train_set["labels"], strict=True)]
    valid_lengths = [len(s) + len(t) for s, t in zip(valid_set["input_ids"], valid_set["labels"], strict=True)]
    collator = DataCollatorForNAT(tokenizer.pad_token_id)
    valid_batches = token_budget_batches(valid_lengths, config.data.max_tokens, seed=0, shuffle=False)
    valid_sources = splits[config.data.valid_split]["source"][: config.eval.max_sentences]
    valid_references = splits[config.data.valid_split]["target"][: config.eval.max_sentences]

    # -- optimiser
    no_decay = ("bias", "layer_norm", "LayerNorm", "embed_positions")
    parameters = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
         "weight_decay": config.optim.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(parameters, lr=config.optim.learning_rate, betas=tuple(config.optim.betas))
    scheduler = get_scheduler(config.optim.scheduler, optimizer, num_warmup_steps=config.optim.warmup_steps,
                              num_training_steps=config.optim.max_steps)
    # adversarial training: the discriminator and its optimiser (constant rate) join the prepared objects, so that
    # checkpoints (`save_state`) hold both models and both optimisers and data parallelism wraps both
    adversarial = config.adversarial if config.adversarial.enabled else None
    if adversarial is not None:
        check_generator(model)
        discriminator = build_discriminator(adversarial, model)
        discriminator_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=adversarial.learning_rate,
                                                    betas=tuple(adversarial.betas),
                                                    weight_decay=adversarial.weight_decay)
        model, optimizer, scheduler, discriminator, discriminator_optimizer = accelerator.prepare(
            model, optimizer, scheduler, discriminator, discriminator_optimizer)
        unwrapped_discriminator = accelerator.unwrap_model(discriminator)
    else:
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    excluded_ids = excluded_token_ids(unwrapped) if adversarial is not None else []
    metric = load_sacrebleu() if accelerator.is_main_process else None

    state = {"step": 0, "epoch": 0, "group_in_epoch": 0, "best_bleu": -1.0, "best_step": None,
             "train_seconds": 0.0, "tokens": 0}
    log_path = output_dir / "log.jsonl"
    if resume:
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        accelerator.print(f"resumed from {checkpoint} at step {state['step']}")
        if accelerator.is_main_process:
            truncate_log(log_path, state["step"])  # the steps after the checkpoint are trained (and logged) again
    accelerator.init_trackers("nat", config={f"{s}.{k}": str(v) for s, values in config.to_dict().items()
                                             for k, v in values.items()})

    def save_training_state() -> None:
        staging = output_dir / "checkpoints" / "last.staging"
        if accelerator.is_main_process and staging.exists():
            shutil.rmtree(staging)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        if accelerator.is_main_process:
            (staging / "trainer_state.json").write_text(json.dumps(state))
            replace_directory(staging, output_dir / "checkpoints" / "last")
        accelerator.wait_for_everyone()

    def save_best() -> None:
        staging = output_dir / "best.staging"
        if staging.exists():
            shutil.rmtree(staging)
        unwrapped.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        shutil.copy(config_path, staging / "train_config.yaml")
        (staging / BEST_MARKER).write_text(json.dumps({"step": state["best_step"], "valid_bleu": state["best_bleu"]}))
        replace_directory(staging, output_dir / "best")
        if adversarial is not None:  # the discriminator of the same step, beside the generator
            staging = output_dir / f"{DISCRIMINATOR_DIR}.staging"
            if staging.exists():
                shutil.rmtree(staging)
            unwrapped_discriminator.save_pretrained(staging)
            replace_directory(staging, output_dir / DISCRIMINATOR_DIR)

    def save_snapshot() -> None:
        """Weights only, for averaging; the last `average_last` are kept."""
        from safetensors.torch import save_model

        snapshots = output_dir / "snapshots"
        snapshots.mkdir(exist_ok=True)
        staging = snapshots / "staging.safetensors"
        save_model(unwrapped, str(staging))
        staging.rename(snapshots / f"step-{state['step']:08d}.safetensors")
        for old in sorted(snapshots.glob("step-*.safetensors"))[: -config.eval.average_last]:
            old.unlink()

    def evaluate_now() -> bool:
        """Validation loss and BLEU (main process); True when this is the best model so far. The caller saves
        the training state before `best/`, so that a kill between the two is repaired by `--resume`."""
        new_best = False
        record = {"step": state["step"], "epoch": state["epoch"], "train_seconds": round(state["train_seconds"], 1)}
        if accelerator.is_main_process:
            record["valid_loss"] = validation_loss(unwrapped, valid_set, collator, valid_batches, config.optim.seed,
                                                   config.model.family, config.model.label_smoothing)
            scores = decode_and_score(unwrapped, tokenizer, valid_sources, valid_references, config.eval.batch_size,
                                      metric, **periodic_decoding)
            record.update(valid_bleu=scores["bleu"], valid_chrf=scores["chrf"],
                          decode_seconds=round(scores["decode_seconds"], 1))
            if scores["bleu"] > state["best_bleu"]:
                state["best_bleu"], state["best_step"], new_best = scores["bleu"], state["step"], True
            record["best_bleu"] = state["best_bleu"]
            if config.eval.average_last >= 2:
                save_snapshot()
            log_line(log_path, {"event": "eval", **record})
            accelerator.log({k: v for k, v in record.items() if k.startswith("valid")}, step=state["step"])
            tqdm.write(f"step {state['step']}: valid loss {record['valid_loss']:.3f}, BLEU {scores['bleu']:.2f}, "
                       f"chrF {scores['chrf']:.2f} (best {state['best_bleu']:.2f} @ {state['best_step']})")
        accelerator.wait_for_everyone()
        return new_best

    if resume and accelerator.is_main_process and state["best_step"] is not None and \
            state["best_step"] == state["step"] and best_model_step(output_dir) != state["best_step"]:
        # killed after this checkpoint but before (or while) writing `best/`: the restored model is the best one
        save_best()
        accelerator.print(f"--resume: rewrote {output_dir / 'best'} (step {state['best_step']})")
    accelerator.wait_for_everyone()

    # -- loop
    accumulation = config.optim.gradient_accumulation_steps
    world, rank = accelerator.num_processes, accelerator.process_index
    # The bar counts what ends training first: steps, or (with a time budget) seconds of training, the steps then
    # shown after it; its ETA includes the evaluations.
    budget = {"max_steps": config.optim.max_steps, "max_minutes": config.optim.max_minutes}
    done_now, total = progress_budget(state["step"], state["train_seconds"], **budget)
    time_bar = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} train-s [{elapsed}<{remaining}{postfix}]"
    progress = tqdm(total=total, initial=done_now, desc="training", dynamic_ncols=True,
                    disable=not accelerator.is_main_process,
                    bar_format=None if config.optim.max_minutes is None else time_bar)
    postfix = {}

    def update_progress() -> None:
        if config.optim.max_minutes is not None:
            postfix["step"] = f"{state['step']}/{config.optim.max_steps}"
        done_now, progress.total = progress_budget(state["step"], state["train_seconds"], **budget)
        progress.set_postfix(postfix, refresh=False)
        progress.update(done_now - progress.n)

    if state["step"] == 0 and accelerator.is_main_process:
        initial_loss = validation_loss(unwrapped, valid_set, collator, valid_batches, config.optim.seed,
                                       config.model.family, config.model.label_smoothing)
        log_line(log_path, {"event": "start", "parameters": unwrapped.num_parameters(), "world_size": world,
                            "train_pairs": len(train_set), "valid_pairs": len(valid_set),
                            "valid_loss": initial_loss,
                            **({"discriminator_parameters": unwrapped_discriminator.num_parameters()}
                               if adversarial is not None else {})})
    model.train()
    if adversarial is not None:
        discriminator.train()
    window_loss, window_tokens, window_start = [], 0, time.perf_counter()
    window_terms: dict[str, list[float]] = {}  # each loss term's per-step values in the log window
    window_counts: dict[str, int] = {}  # each count summed over the log window
    window_metrics: dict[str, list[float]] = {}  # other per-step values (adversarial: discriminator accuracy, ...)
    done = state["step"] >= config.optim.max_steps
    while not done:
        epoch_batches = token_budget_batches(train_lengths, config.data.max_tokens, seed=config.optim.seed +
                                             state["epoch"])
        per_process = len(epoch_batches) // world
        mine = epoch_batches[rank * per_process : (rank + 1) * per_process]  # equal count on every process
        groups = [mine[i : i + accumulation] for i in range(0, len(mine) - accumulation + 1, accumulation)]
        for group in groups[state["group_in_epoch"] :]:
            step_start = time.perf_counter()
            losses, micro_terms, micro_counts, micro_metrics = [], {}, {}, {}
            for micro, indices in enumerate(group):
                batch = {k: v.to(accelerator.device) for k, v in collator([train_set[i] for i in indices]).items()}
                window_tokens += batch["input_ids"].numel() + batch["labels"].numel()  # padded tokens processed
                last_micro_batch = micro == len(group) - 1  # gradients are synchronised across processes only here
                with contextlib.nullcontext() if last_micro_batch else accelerator.no_sync(model):
                    batch_loss = training_step_loss(model, batch, config.model.family,
                                                    config.model.label_smoothing, step=state["step"])
                    loss = batch_loss.loss
                    if adversarial is not None:
                        # the generator's one-pass sample; its adversarial term once the discriminator warmed up
                        fooling = state["step"] >= adversarial.discriminator_warmup_steps
                        with contextlib.nullcontext() if fooling else torch.no_grad():
                            sample = generator_sample(unwrapped, batch["input_ids"], batch["attention_mask"],
                                                      batch["labels"])
                        temperature = adversarial.temperature(state["step"])
                        micro_metrics.setdefault("temperature", []).append(torch.tensor(temperature))
                        if fooling:
                            adversarial_loss = generator_term(sample, unwrapped_discriminator, temperature,
                                                              excluded_ids)
                            loss = loss + adversarial.weight * adversarial_loss
                            batch_loss.terms["adversarial"] = adversarial_loss
                        sample.logits = sample.logits.detach()
                    accelerator.backward(loss / accumulation)
                losses.append(batch_loss.loss.detach())  # the method's loss (an adversarial term is its own term)
                for name, value in batch_loss.terms.items():
                    micro_terms.setdefault(name, []).append(value.detach().float())
                for name, value in batch_loss.counts.items():
                    micro_counts.setdefault(name, []).append(value.detach().float())
            accelerator.clip_grad_norm_(model.parameters(), config.optim.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if adversarial is not None:  # the discriminator's turn, on the same batch (accumulation is 1)
                for _ in range(adversarial.discriminator_steps):
                    discriminator_loss, accuracy = discriminator_term(sample, discriminator,
                                                                      adversarial.label_smoothing, excluded_ids)
                    accelerator.backward(discriminator_loss)
                    accelerator.clip_grad_norm_(discriminator.parameters(), config.optim.max_grad_norm)
                    discriminator_optimizer.step()
                    discriminator_optimizer.zero_grad(set_to_none=True)
                    micro_terms.setdefault("discriminator", []).append(discriminator_loss.detach().float())
                    micro_metrics.setdefault("discriminator_accuracy", []).append(accuracy.float())
                del sample
            state["step"] += 1
            state["group_in_epoch"] += 1
            state["train_seconds"] += time.perf_counter() - step_start  # training time only, evaluation excluded
            # the loss and each term: mean over micro-batches and processes; each count: sum (one reduce each)
            term_names, count_names, metric_names = sorted(micro_terms), sorted(micro_counts), sorted(micro_metrics)
            means = torch.stack([torch.stack(losses).float().mean()]
                                + [torch.stack(micro_terms[name]).mean() for name in term_names]
                                + [torch.stack(micro_metrics[name]).float().mean().to(accelerator.device)
                                   for name in metric_names])
            step_loss, *step_terms = accelerator.reduce(means, reduction="mean").tolist()
            step_terms, step_metrics = step_terms[: len(term_names)], step_terms[len(term_names) :]
            if count_names:
                sums = torch.stack([torch.stack(micro_counts[name]).sum() for name in count_names])
                for name, value in zip(count_names, accelerator.reduce(sums, reduction="sum").tolist(), strict=True):
                    window_counts[name] = window_counts.get(name, 0) + round(value)
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"loss is {step_loss} at step {state['step']}; the last good checkpoint "
                                         "is kept")
            broken = [name for name, value in zip(term_names, step_terms, strict=True) if not math.isfinite(value)]
            if broken:  # e.g. the discriminator's loss, which the logged (NAT) loss does not include
                raise FloatingPointError(f"loss term(s) {broken} not finite at step {state['step']}; the last good "
                                         "checkpoint is kept")
            window_loss.append(step_loss)
            for name, value in zip(term_names, step_terms, strict=True):
                window_terms.setdefault(name, []).append(value)
            for name, value in zip(metric_names, step_metrics, strict=True):
                window_metrics.setdefault(name, []).append(value)
            if state["step"] % config.run.log_every == 0 or state["step"] == 1:
                elapsed = time.perf_counter() - window_start
                record = {"event": "train", "step": state["step"], "loss": sum(window_loss) / len(window_loss),
                          "loss_terms": {name: sum(values) / len(values) for name, values in window_terms.items()},
                          "counts": dict(window_counts), "lr": scheduler.get_last_lr()[0],
                          "tokens_per_second": window_tokens * world / elapsed}
                if window_metrics:
                    record["metrics"] = {name: sum(values) / len(values) for name, values in window_metrics.items()}
                postfix.update(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_second']:.0f}")
                if accelerator.is_main_process:
                    log_line(log_path, record)
                accelerator.log({"train_loss": record["loss"], "lr": record["lr"],
                                 **{f"train_loss_{name}": value for name, value in record["loss_terms"].items()},
                                 **{f"train_{name}": value for name, value in record["counts"].items()},
                                 **{f"train_{name}": value for name, value in record.get("metrics", {}).items()}},
                                step=state["step"])
                window_loss, window_tokens, window_start = [], 0, time.perf_counter()
                window_terms, window_counts, window_metrics = {}, {}, {}
            update_progress()
            out_of_time = (config.optim.max_minutes is not None
                           and state["train_seconds"] > 60 * config.optim.max_minutes)
            done = state["step"] >= config.optim.max_steps or out_of_time
            if state["step"] % config.eval.eval_every == 0 or done:
                new_best = evaluate_now()
                save_training_state()
                if new_best:
                    save_best()
            elif config.run.checkpoint_every and state["step"] % config.run.checkpoint_every == 0:
                save_training_state()
            if done:
                break
        else:
            state["epoch"] += 1
            state["group_in_epoch"] = 0
    progress.close()

    summary = {"steps": state["step"], "epochs": state["epoch"], "train_seconds": round(state["train_seconds"], 1),
               "best_valid_bleu": state["best_bleu"], "best_step": state["best_step"]}
    final_models = {"": output_dir / "best"}
    snapshots = sorted((output_dir / "snapshots").glob("step-*.safetensors"))
    if accelerator.is_main_process and config.eval.average_last >= 2 and len(snapshots) >= 2:
        averaged = average_checkpoints(snapshots)
        missing, unexpected = unwrapped.load_state_dict(averaged, strict=False)
        tied = {name for pair in (unwrapped._tied_weights_keys or {}).items() for name in pair}
        if unexpected or set(missing) - tied:  # a snapshot stores one name of each tied (shared) tensor
            raise RuntimeError(f"averaging: missing {missing}, unexpected {unexpected}")
        staging = output_dir / "averaged.staging"
        unwrapped.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        replace_directory(staging, output_dir / "averaged")
        final_models["averaged_"] = output_dir / "averaged"
        summary["averaged_steps"] = [int(path.stem.split("-")[1]) for path in snapshots]
    if accelerator.is_main_process and (output_dir / "best").is_dir():
        # `--resume` may have changed the final decoding, test splits or directory: best/ decodes like the final
        # evaluation and carries the config that describes it (model cards reproduce the model from that copy)
        update_generation_defaults(output_dir / "best", final_decoding)
        shutil.copy(config_path, output_dir / "best" / "train_config.yaml")
    for prefix, model_dir in final_models.items():
        if not accelerator.is_main_process:
            break
        # The best (and averaged) model on the whole validation set and every test split, final decoding settings.
        final_model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).to(accelerator.device)
        for split in [config.data.valid_split, *config.data.test_splits]:
            pairs = splits[split]
            scores = decode_and_score(final_model, tokenizer, pairs["source"], pairs["target"],
                                      config.eval.batch_size, metric, **final_decoding)
            summary[f"{prefix}{split}_bleu"], summary[f"{prefix}{split}_chrf"] = scores["bleu"], scores["chrf"]
            summary[f"{prefix}{split}_decode_seconds"] = round(scores["decode_seconds"], 1)
            summary["sacrebleu_signature"] = scores["signature"]
            hypotheses_path = output_dir / f"{prefix}{split}.hyp.{config.data.target_lang}"
            hypotheses_path.write_text("\n".join(scores["hypotheses"]) + "\n")
    if accelerator.is_main_process:
        # the final decoding options at the top level (e.g. num_iterations, length_beam for cmlm; num_beams for ar)
        summary.update(family=config.model.family, world_size=world, **final_decoding)
        (output_dir / "results.json").write_text(json.dumps(summary, indent=1))
        log_line(log_path, {"event": "end", **summary})
        print(summary_line(summary, config, output_dir), flush=True)  # stdout, after tqdm's stderr bar
    accelerator.end_training()
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="nat-hf train", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML file with model/data/optim/eval/run sections")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.learning_rate=5e-4")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in run.output_dir from its last checkpoint (one killed before its "
                             "first checkpoint restarts from step 0)")
    parser.add_argument("--init-from-ar", metavar="DIR", help="start from the matching weights of an AR model")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"model.init_from_ar={args.init_from_ar}"] if args.init_from_ar else [])
    try:
        config = load_config(args.config, overrides)
        return train(config, resume=args.resume)
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error


if __name__ == "__main__":
    main()
