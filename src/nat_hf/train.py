"""Train a NAT model with Accelerate: `nat-hf train CONFIG.yaml [section.key=value ...] [--resume]`.

Reads top to bottom like accelerate's complete example: config -> data -> model -> optimiser -> loop with
periodic evaluation (validation loss, sacreBLEU/chrF of decoded output) and checkpoints. Two kinds of
checkpoint are written under `run.output_dir`:

- `checkpoints/last/`: the full training state (model, optimiser, scheduler, RNG, data position) for `--resume`;
- `best/`: the model with the best validation BLEU as a complete `save_pretrained` directory (weights, config,
  generation config, tokenizer, training config), ready for `from_pretrained` or the Hub.

Both are written to a temporary directory first and swapped in by renaming, so a killed run never leaves a
half-written checkpoint in place of a good one. Multi-process: `torchrun --nproc_per_node 2 -m nat_hf.train ...`
(or `accelerate launch --multi_gpu --num_processes 2 ...`; on CPU, `accelerate launch --cpu --num_processes 2`
silently starts one process).
"""

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import torch
import yaml

from .configuration_nat import NATConfig
from .data import DataCollatorForNAT, DataError, load_split, token_budget_batches, tokenize_split
from .inference import translate_texts
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
    eval_every: int = 1000  # optimiser steps between evaluations (and checkpoints)
    num_iterations: int = 4  # decoding for the periodic validation BLEU that picks the best checkpoint
    length_beam: int = 3
    max_sentences: int | None = None  # periodic BLEU on the first N validation sentences only, for speed
    final_num_iterations: int = 10  # decoding of the final evaluation (whole validation set and test splits),
    final_length_beam: int = 5  # also saved as the best model's generation defaults
    batch_size: int = 50  # sentences per generate call
    average_last: int = 0  # if >= 2: also average the weights of the last N evaluated checkpoints into averaged/
    num_beams: int = 1  # family ar: beam size of the periodic validation decoding
    final_num_beams: int = 4  # family ar: beam size of the final evaluation (also saved as generation default)


@dataclass
class RunArgs:
    output_dir: str = "runs/nat"
    log_every: int = 50
    threads: int | None = None  # torch CPU threads per process; None keeps torch's default


@dataclass
class TrainConfig:
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    optim: OptimArgs = field(default_factory=OptimArgs)
    eval: EvalArgs = field(default_factory=EvalArgs)
    run: RunArgs = field(default_factory=RunArgs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Keys that may differ between a run and its resumption (they do not change what was trained so far).
RESUMABLE_CHANGES = {("optim", "max_steps"), ("optim", "max_minutes"), ("run", "log_every"), ("run", "threads"),
                     ("eval", "batch_size")}


def _coerce(value: Any, annotation, where: str) -> Any:
    """Check (and for ints given to floats, convert) one YAML value against its dataclass annotation."""
    options = get_args(annotation) if get_origin(annotation) in (types.UnionType, typing.Union) else ()
    if options:
        if value is None and type(None) in options:
            return None
        annotation = next(option for option in options if option is not type(None))
    if get_origin(annotation) is list:
        (item_type,) = get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(item, item_type, f"{where}[]") for item in value]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
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
        unknown = sorted(set(section_values) - set(known))
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in config section {section!r} (known: {sorted(known)})")
        sections[section] = section_class(**{
            key: _coerce(value, section_hints[key], f"{section}.{key}") for key, value in section_values.items()
        })
    config = TrainConfig(**sections)
    validate_config(config)
    return config


def validate_config(config: TrainConfig) -> None:
    checks = [
        (config.data.max_tokens >= 1, "data.max_tokens must be >= 1"),
        (config.optim.learning_rate > 0, "optim.learning_rate must be > 0"),
        (config.optim.max_steps >= 1, "optim.max_steps must be >= 1"),
        (config.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
        (config.optim.gradient_accumulation_steps >= 1, "optim.gradient_accumulation_steps must be >= 1"),
        (len(config.optim.betas) == 2, "optim.betas must hold two numbers"),
        (config.optim.mixed_precision in ("no", "fp16", "bf16"), "optim.mixed_precision must be no, fp16 or bf16"),
        (config.eval.eval_every >= 1, "eval.eval_every must be >= 1"),
        (config.eval.num_iterations >= 1, "eval.num_iterations must be >= 1"),
        (config.eval.length_beam >= 1, "eval.length_beam must be >= 1"),
        (config.eval.final_num_iterations >= 1, "eval.final_num_iterations must be >= 1"),
        (config.eval.final_length_beam >= 1, "eval.final_length_beam must be >= 1"),
        (config.eval.average_last >= 0, "eval.average_last must be >= 0"),
        (config.model.family in MODEL_FAMILIES, f"model.family must be one of {MODEL_FAMILIES}"),
        (config.model.family == "nat" or config.model.init_from_ar is None, "model.init_from_ar needs family nat"),
        (config.data.tokenizer_algorithm in ("unigram", "bpe"), "data.tokenizer_algorithm must be unigram or bpe"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def load_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config and apply `section.key=value` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    values = yaml.safe_load(os.path.expandvars(path.read_text())) or {}  # ${NAT_HF_DATA_DIR} and friends
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or key.count(".") != 1:
            raise ConfigError(f"override {override!r} must look like section.key=value")
        section, name = key.split(".")
        values.setdefault(section, {})[name] = yaml.safe_load(os.path.expandvars(raw))
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


def training_loss(model, batch: dict, family: str, label_smoothing: float) -> torch.Tensor:
    """The batch-averaged training loss: the NAT model's own (objective + length), or for an AR model the
    label-smoothed cross-entropy of teacher forcing over the non-padding target tokens."""
    if family == "nat":
        return model(**batch).loss
    from transformers.models.marian.modeling_marian import shift_tokens_right

    config = model.config
    labels = batch["labels"].masked_fill(batch["labels"] == config.pad_token_id, -100)
    decoder_input_ids = shift_tokens_right(labels, config.pad_token_id, config.decoder_start_token_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=decoder_input_ids).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                                             label_smoothing=label_smoothing)


def decoding_options(config: TrainConfig, final: bool) -> dict:
    """`generate` arguments of the periodic (`final=False`) or final evaluation, by model family."""
    if config.model.family == "ar":
        return {"num_beams": config.eval.final_num_beams if final else config.eval.num_beams,
                "max_new_tokens": config.model.max_target_positions + 1}
    if final:
        return {"num_iterations": config.eval.final_num_iterations, "length_beam": config.eval.final_length_beam}
    return {"num_iterations": config.eval.num_iterations, "length_beam": config.eval.length_beam}


def nat_config(args: ModelArgs, tokenizer) -> NATConfig:
    return NATConfig(
        **config_kwargs_from_tokenizer(tokenizer),
        d_model=args.d_model, encoder_layers=args.encoder_layers, decoder_layers=args.decoder_layers,
        encoder_attention_heads=args.attention_heads, decoder_attention_heads=args.attention_heads,
        encoder_ffn_dim=args.ffn_dim, decoder_ffn_dim=args.ffn_dim, dropout=args.dropout,
        attention_dropout=args.attention_dropout, activation_dropout=args.activation_dropout,
        activation_function=args.activation_function, normalize_before=args.normalize_before,
        position_embedding_type=args.position_embedding_type, max_source_positions=args.max_source_positions,
        max_target_positions=args.max_target_positions, objective=args.objective,
        decoder_input_mode=args.decoder_input_mode, length_prediction_mode=args.length_prediction_mode,
        max_length_offset=args.max_length_offset, length_loss_weight=args.length_loss_weight,
        label_smoothing=args.label_smoothing,
    )


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
    differences = []
    for section, values in current.items():
        for key, value in values.items():
            if (section, key) not in RESUMABLE_CHANGES and saved.get(section, {}).get(key) != value:
                differences.append(f"{section}.{key}: {saved.get(section, {}).get(key)!r} -> {value!r}")
    return differences


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
    mismatched = {key: (getattr(model.config, key, None), value) for key, value in expected.items()
                  if getattr(model.config, key, None) != value}
    if mismatched:
        raise ConfigError(f"the model config does not match the tokenizer (config, tokenizer): {mismatched}")
    for name, value in decoding_options(config, final=True).items():
        setattr(model.generation_config, name, value)  # the saved model decodes like its final evaluation
    return model, report


def log_line(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps({**record, "time": round(time.time(), 1)}) + "\n")


def train(config: TrainConfig, resume: bool = False) -> dict:
    """Run the training described by `config`; return a summary (best validation scores, steps, seconds)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import AutoModelForSeq2SeqLM, get_scheduler

    from .metrics import load_sacrebleu

    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    if config.data.data_dir is None and os.environ.get(DATA_DIR_ENV):
        config.data.data_dir = os.environ[DATA_DIR_ENV]
    output_dir = Path(config.run.output_dir)
    config_path = output_dir / "train_config.yaml"

    # -- refuse to clobber or mis-resume, before anything is written
    if resume:
        checkpoint = last_checkpoint(output_dir)
        if checkpoint is None:
            raise ConfigError(f"--resume: no checkpoint under {output_dir}/checkpoints")
        saved = yaml.safe_load(config_path.read_text())
        differences = config_differences(saved, config.to_dict())
        if differences:
            raise ConfigError(f"--resume: {output_dir} was trained with a different config: {differences}")
    elif last_checkpoint(output_dir) is not None or (output_dir / "best").exists():
        raise ConfigError(f"{output_dir} already holds a run; pass --resume to continue it or choose another "
                          "run.output_dir")

    # Without cpu=True, accelerate ignores torchrun's WORLD_SIZE on a machine with no accelerator and every
    # process trains alone; with it, the processes form a gloo group (DistributedType.MULTI_CPU).
    accelerator = Accelerator(mixed_precision=config.optim.mixed_precision, log_with="tensorboard",
                              project_dir=str(output_dir), cpu=not torch.cuda.is_available())
    set_seed(config.optim.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    accelerator.wait_for_everyone()

    # -- data
    eval_data_dir = config.data.eval_data_dir or config.data.data_dir

    def split_data(name: str, directory):
        return load_split(name, config.data.source_lang, config.data.target_lang, directory,
                          config.data.dataset_name)

    splits = {config.data.train_split: split_data(config.data.train_split, config.data.data_dir),
              config.data.valid_split: split_data(config.data.valid_split, eval_data_dir)}
    tokenizer = prepare_tokenizer(config, output_dir, accelerator)
    model, init_report = build_model(config, tokenizer)
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
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    metric = load_sacrebleu() if accelerator.is_main_process else None

    state = {"step": 0, "epoch": 0, "group_in_epoch": 0, "best_bleu": -1.0, "best_step": None,
             "train_seconds": 0.0, "tokens": 0}
    if resume:
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        accelerator.print(f"resumed from {checkpoint} at step {state['step']}")
    log_path = output_dir / "log.jsonl"
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
        replace_directory(staging, output_dir / "best")

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

    def evaluate_now() -> dict:
        record = {"step": state["step"], "epoch": state["epoch"], "train_seconds": round(state["train_seconds"], 1)}
        if accelerator.is_main_process:
            record["valid_loss"] = validation_loss(unwrapped, valid_set, collator, valid_batches, config.optim.seed,
                                                   config.model.family, config.model.label_smoothing)
            scores = decode_and_score(unwrapped, tokenizer, valid_sources, valid_references, config.eval.batch_size,
                                      metric, **decoding_options(config, final=False))
            record.update(valid_bleu=scores["bleu"], valid_chrf=scores["chrf"],
                          decode_seconds=round(scores["decode_seconds"], 1))
            if scores["bleu"] > state["best_bleu"]:
                state["best_bleu"], state["best_step"] = scores["bleu"], state["step"]
                save_best()
            record["best_bleu"] = state["best_bleu"]
            if config.eval.average_last >= 2:
                save_snapshot()
            log_line(log_path, {"event": "eval", **record})
            accelerator.log({k: v for k, v in record.items() if k.startswith("valid")}, step=state["step"])
            tqdm.write(f"step {state['step']}: valid loss {record['valid_loss']:.3f}, BLEU {scores['bleu']:.2f}, "
                       f"chrF {scores['chrf']:.2f} (best {state['best_bleu']:.2f} @ {state['best_step']})")
        accelerator.wait_for_everyone()
        return record

    # -- loop
    accumulation = config.optim.gradient_accumulation_steps
    world, rank = accelerator.num_processes, accelerator.process_index
    progress = tqdm(total=config.optim.max_steps, initial=state["step"], disable=not accelerator.is_main_process,
                    desc="training", dynamic_ncols=True)
    if state["step"] == 0 and accelerator.is_main_process:
        initial_loss = validation_loss(unwrapped, valid_set, collator, valid_batches, config.optim.seed,
                                       config.model.family, config.model.label_smoothing)
        log_line(log_path, {"event": "start", "parameters": unwrapped.num_parameters(), "world_size": world,
                            "train_pairs": len(train_set), "valid_pairs": len(valid_set),
                            "valid_loss": initial_loss})
    model.train()
    window_loss, window_tokens, window_start = [], 0, time.perf_counter()
    done = state["step"] >= config.optim.max_steps
    while not done:
        epoch_batches = token_budget_batches(train_lengths, config.data.max_tokens, seed=config.optim.seed +
                                             state["epoch"])
        per_process = len(epoch_batches) // world
        mine = epoch_batches[rank * per_process : (rank + 1) * per_process]  # equal count on every process
        groups = [mine[i : i + accumulation] for i in range(0, len(mine) - accumulation + 1, accumulation)]
        for group in groups[state["group_in_epoch"] :]:
            step_start = time.perf_counter()
            losses = []
            for micro, indices in enumerate(group):
                batch = {k: v.to(accelerator.device) for k, v in collator([train_set[i] for i in indices]).items()}
                window_tokens += batch["input_ids"].numel() + batch["labels"].numel()  # padded tokens processed
                last_micro_batch = micro == len(group) - 1  # gradients are synchronised across processes only here
                with contextlib.nullcontext() if last_micro_batch else accelerator.no_sync(model):
                    loss = training_loss(model, batch, config.model.family, config.model.label_smoothing)
                    accelerator.backward(loss / accumulation)
                losses.append(loss.detach())
            accelerator.clip_grad_norm_(model.parameters(), config.optim.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["group_in_epoch"] += 1
            state["train_seconds"] += time.perf_counter() - step_start  # training time only, evaluation excluded
            step_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"loss is {step_loss} at step {state['step']}; the last good checkpoint "
                                         "is kept")
            window_loss.append(step_loss)
            progress.update(1)
            if state["step"] % config.run.log_every == 0 or state["step"] == 1:
                elapsed = time.perf_counter() - window_start
                record = {"event": "train", "step": state["step"], "loss": sum(window_loss) / len(window_loss),
                          "lr": scheduler.get_last_lr()[0], "tokens_per_second": window_tokens * world / elapsed}
                progress.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_second']:.0f}")
                if accelerator.is_main_process:
                    log_line(log_path, record)
                accelerator.log({"train_loss": record["loss"], "lr": record["lr"]}, step=state["step"])
                window_loss, window_tokens, window_start = [], 0, time.perf_counter()
            out_of_time = (config.optim.max_minutes is not None
                           and state["train_seconds"] > 60 * config.optim.max_minutes)
            done = state["step"] >= config.optim.max_steps or out_of_time
            if state["step"] % config.eval.eval_every == 0 or done:
                evaluate_now()
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
    for prefix, model_dir in final_models.items():
        if not accelerator.is_main_process:
            break
        # The best (and averaged) model on the whole validation set and every test split, final decoding settings.
        final_model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).to(accelerator.device)
        for split in [config.data.valid_split, *config.data.test_splits]:
            pairs = splits.get(split) or split_data(split, eval_data_dir)
            scores = decode_and_score(final_model, tokenizer, pairs["source"], pairs["target"],
                                      config.eval.batch_size, metric, **decoding_options(config, final=True))
            summary[f"{prefix}{split}_bleu"], summary[f"{prefix}{split}_chrf"] = scores["bleu"], scores["chrf"]
            summary[f"{prefix}{split}_decode_seconds"] = round(scores["decode_seconds"], 1)
            summary["sacrebleu_signature"] = scores["signature"]
            hypotheses_path = output_dir / f"{prefix}{split}.hyp.{config.data.target_lang}"
            hypotheses_path.write_text("\n".join(scores["hypotheses"]) + "\n")
    if accelerator.is_main_process:
        summary.update(family=config.model.family, world_size=world, **decoding_options(config, final=True))
        (output_dir / "results.json").write_text(json.dumps(summary, indent=1))
        log_line(log_path, {"event": "end", **summary})
    accelerator.end_training()
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="nat-hf train", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML file with model/data/optim/eval/run sections")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.learning_rate=5e-4")
    parser.add_argument("--resume", action="store_true", help="continue the run in run.output_dir")
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
