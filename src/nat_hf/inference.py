"""Load a saved NAT model (directory or Hub repo id) and translate sentences in length-sorted batches: a list at
once (`translate_texts`) or a stream, chunk by chunk, with a result per source (`translate_lines`)."""

import argparse
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch

# files of which a saved tokenizer has at least one (a fast tokenizer's tokenizer.json, or the config that names a
# slow tokenizer's vocabulary files)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class ModelNotFoundError(FileNotFoundError):
    """No model under the given name: no such directory (nor Hub repo), or the directory lacks a file it needs."""


def is_hub_repo_id(name: str) -> bool:
    """Whether `name` has the form of a Hub repo id (`name` or `namespace/name`), so that a missing local path
    may still be a repo to download (or to find in the offline cache)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def thread_count(text: str) -> int:
    """argparse type of every command's `--threads`: an integer >= 1 (torch and ONNX Runtime refuse 0 or less,
    the first with a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def check_model_directory(path: Path) -> None:
    """Raise `ModelNotFoundError` naming what is missing when `path` is not a saved model with its tokenizer,
    before transformers fails deep inside its Hub code with a message about repo ids."""
    if not path.is_dir():
        raise ModelNotFoundError(f"{path} is a file, not a model directory")
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"model directory {path} has no config.json: it is not a saved model")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelNotFoundError(f"model directory {path} has no tokenizer: {' and '.join(TOKENIZER_FILES)} are "
                                 "missing (save one with tokenizer.save_pretrained)")


def load_translator(name_or_path: str | Path, device: str = "cpu", int8: bool = False, threads: int | None = None,
                    **from_pretrained_kwargs) -> tuple:
    """The model (through `AutoModelForSeq2SeqLM`, remote code allowed) and its tokenizer, ready to translate. A
    directory written by `nat-hf export` loads as an `ORTNATForConditionalGeneration` (ONNX Runtime; `int8`: its
    quantised graphs, `threads`: ONNX Runtime's intra-op threads); `int8` and `threads` apply to those only.

    Raises `ModelNotFoundError` with one clear message when the directory does not exist (and the name is no Hub
    repo id), lacks its config or tokenizer files, or the Hub cannot provide the repo."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    path = Path(name_or_path)
    local = path.exists()
    if local:
        check_model_directory(path)
        from .onnx_runtime import ORTNATForConditionalGeneration, is_onnx_export

        if is_onnx_export(path):
            model = ORTNATForConditionalGeneration.from_pretrained(path, int8=int8, threads=threads)
            return model.to(device), AutoTokenizer.from_pretrained(path)
    elif not is_hub_repo_id(str(name_or_path)):
        raise ModelNotFoundError(f"model directory {name_or_path} not found")
    if int8:
        raise ValueError(f"int8 applies to a model exported with nat-hf export --int8; {name_or_path} is not one")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForSeq2SeqLM.from_pretrained(name_or_path, trust_remote_code=True, **from_pretrained_kwargs)
    except OSError as error:
        if local:
            raise ModelNotFoundError(f"could not load the model in {name_or_path}: {error}") from error
        raise ModelNotFoundError(f"model {name_or_path} not found: no such directory, and loading it as a Hub repo "
                                 f"id failed: {error}") from error
    return model.to(device).eval(), tokenizer


def output_limit(config) -> int:
    """The longest output a model's position tables allow. A NAT model has `max_target_positions`; an AR model
    predicts its n-th token from decoder position n - 1 (the start token sits at 0), so it reaches
    `max_position_embeddings` tokens."""
    return getattr(config, "max_target_positions", None) or config.max_position_embeddings


def source_limit(config) -> int | None:
    """The longest source, in tokens: NAT models name it `max_source_positions`, Marian/BART
    `max_position_embeddings`."""
    return getattr(config, "max_source_positions", None) or getattr(config, "max_position_embeddings", None)


def with_output_length_cap(model, generate_kwargs: dict) -> dict:
    """`generate_kwargs`, plus `max_new_tokens` for an autoregressive model when neither the call nor the model's
    generation config caps the output: transformers would otherwise stop at its model-agnostic `max_length=20`
    and silently cut longer translations. The cap is one below the longest output the model's positions allow;
    decoding still ends at end-of-sentence. NAT models (which have a `nat_method`) cap their lengths themselves."""
    from transformers import GenerationConfig

    generation_config = model.generation_config
    is_nat = getattr(model, "nat_method", None) is not None
    if (is_nat or "max_new_tokens" in generate_kwargs or "max_length" in generate_kwargs
            or generation_config.max_new_tokens is not None
            or generation_config.max_length != GenerationConfig().max_length):
        return generate_kwargs
    # one below `output_limit`, as first shipped (tests pin it): a conservative margin, not a necessity
    return {**generate_kwargs, "max_new_tokens": output_limit(model.config) - 1}


def check_generate_kwargs(model, generate_kwargs: dict) -> None:
    """Raise `ValueError` naming a bad decoding option before any sentence is translated, for models that can
    validate them (NAT's `_generation_options`, which pops from the dict it gets: it gets a copy). Other models
    validate in `generate`."""
    check = getattr(model, "_generation_options", None)
    if check is not None:
        options = dict(generate_kwargs)
        check(options.pop("generation_config", None), options)


OPTION_VALUE_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def option_value_type(declared) -> type:
    """The value type (`int`, `float`, `str` or `bool`) of a decoding option as a method's `Options` dataclass
    declares it: a type, a union with None (`float | None`, `Optional[float]`), a `Literal[...]`, or the same as an
    annotation string (a method file with `from __future__ import annotations` declares strings). Anything else is
    read as text (the method validates the value)."""
    if isinstance(declared, str):
        text = declared.strip()
        inner = re.fullmatch(r"(?:typing\.)?Optional\[(.+)\]", text)
        parts = [part.strip() for part in (inner.group(1) if inner else text).split("|")]
        parts = [part for part in parts if part not in ("None", "NoneType")]
        if len(parts) == 1 and parts[0] in OPTION_VALUE_TYPES:
            return OPTION_VALUE_TYPES[parts[0]]
        literal = re.fullmatch(r"(?:typing\.)?Literal\[(.+)\]", parts[0]) if len(parts) == 1 else None
        if literal:
            first = literal.group(1).split(",")[0].strip()
            return str if first[:1] in "'\"" else float if "." in first else int
        return str
    origin = typing.get_origin(declared)
    if origin in (typing.Union, types.UnionType):
        kinds = [kind for kind in typing.get_args(declared) if kind is not type(None)]
        return option_value_type(kinds[0]) if len(kinds) == 1 else str
    if origin is typing.Literal:
        return type(typing.get_args(declared)[0])
    return declared if declared in OPTION_VALUE_TYPES.values() else str


def parse_option_value(name: str, value, declared):
    """`value` (text, e.g. from a command line or `nat-hf bench`'s `key=value`, or an already parsed number) as the
    option's declared type (`option_value_type`): `1` for a float option is `1.0`; a bool reads true/false/1/0.
    ValueError naming the option when the text is no such value."""
    kind = option_value_type(declared)
    text = value if isinstance(value, str) else str(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"{name} must be true or false, got {text!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {text!r}") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {text!r}") from None
    return text


def typed_decoding_options(model, options: dict) -> dict:
    """`options` with the NAT model's method options converted to their declared types (`parse_option_value`);
    other options, and every option of a model without a NAT method (an AR model), unchanged."""
    method = getattr(model, "nat_method", None)
    if not hasattr(method, "option_help"):
        return dict(options)
    declared = {name: kind for name, (kind, _) in method.option_help().items()}
    return {name: parse_option_value(name, value, declared[name]) if name in declared else value
            for name, value in options.items()}


@dataclass(frozen=True)
class UnreadableSource:
    """A source line that could not be read as text (e.g. not UTF-8): `translate_lines` reports it as a failed
    source, in its place, instead of ending the stream."""

    error: str


@dataclass(frozen=True)
class TranslationResult:
    """One source's outcome: its translation (empty for a blank source or a failed one), why it was not
    translated (`error`), and how many tokens it had when `truncation` cut it (`truncated_from`)."""

    text: str
    error: str | None = None
    truncated_from: int | None = None


def over_long_sources(model, tokenizer, sources: list[str]) -> dict[int, int]:
    """`{index: token count}` of the sources longer than the model accepts (blank sources are never run)."""
    limit = source_limit(model.config)
    indices = [index for index, source in enumerate(sources) if source.strip()]
    if not limit or not indices:
        return {}
    encoded = tokenizer([sources[index] for index in indices], verbose=False)["input_ids"]
    return {index: len(ids) for index, ids in zip(indices, encoded, strict=True) if len(ids) > limit}


def too_long_message(tokens: int, limit: int) -> str:
    """Why a source is not translated (the CLI adds its --truncation hint to errors that start like this)."""
    return f"source has {tokens} tokens but the model accepts at most {limit}"


def _translate_chunk(model, tokenizer, sources: list[str], batch_size: int, truncation: bool, generate_kwargs: dict,
                     strict: bool, progress: Callable[[int], None] | None = None) -> list[TranslationResult]:
    """Translate `sources` in batches of similar token length; results in input order. A blank source gets an
    empty translation without running the model (a tokenizer turns spaces into word-boundary tokens, from which
    the model would make words). An over-long source raises `ValueError` before any generation if `strict`, else
    gets an `error` result; with `truncation` it is cut to the model's limit instead."""
    limit = source_limit(model.config)
    results: list[TranslationResult | None] = [None] * len(sources)
    todo = []
    for index, source in enumerate(sources):
        if isinstance(source, UnreadableSource):
            results[index] = TranslationResult("", error=f"{source.error} (not translated)")
        elif source.strip():
            todo.append(index)
        else:
            results[index] = TranslationResult("")
    encoded = dict(zip(todo, tokenizer([sources[i] for i in todo], verbose=False)["input_ids"] if todo else [],
                       strict=True))
    over = {index: len(ids) for index, ids in encoded.items() if limit and len(ids) > limit}
    if over and truncation:
        cut = tokenizer([sources[i] for i in over], truncation=True, max_length=limit, verbose=False)["input_ids"]
        encoded.update(zip(over, cut, strict=True))
    elif over:
        if strict:
            first, tokens = next(iter(over.items()))
            more = f" (and {len(over) - 1} more, at indices {list(over)[1:11]})" if len(over) > 1 else ""
            raise ValueError(f"source {first} (0-based): {too_long_message(tokens, limit)}{more}; pass "
                             "truncation=True to cut it")
        for index, tokens in over.items():
            results[index] = TranslationResult("", error=f"{too_long_message(tokens, limit)} (not translated)")
            del encoded[index]
    if progress is not None and len(encoded) < len(sources):
        progress(len(sources) - len(encoded))
    order = sorted(encoded, key=lambda index: len(encoded[index]))
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[index] for index in indices]}, return_tensors="pt").to(device)
        with torch.no_grad():
            output = model.generate(**batch, **generate_kwargs)
        for index, text in zip(indices, tokenizer.batch_decode(output, skip_special_tokens=True), strict=True):
            results[index] = TranslationResult(text, truncated_from=over.get(index))
        if progress is not None:
            progress(len(indices))
    return results


def _prepare(model, batch_size: int, generate_kwargs: dict) -> dict:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_generate_kwargs(model, generate_kwargs)
    return with_output_length_cap(model, generate_kwargs)


def translate_texts(model, tokenizer, sources: list[str], batch_size: int = 50, truncation: bool = False,
                    **generate_kwargs) -> list[str]:
    """Translate `sources` in batches of similar length (less padding); translations come back in input order.

    `truncation=False` makes a source longer than the model accepts a `ValueError` (naming its index, raised
    before anything is translated) rather than cutting it. Blank sources translate to empty strings."""
    generate_kwargs = _prepare(model, batch_size, generate_kwargs)
    return [result.text for result in _translate_chunk(model, tokenizer, list(sources), batch_size, truncation,
                                                       generate_kwargs, strict=True)]


def translate_lines(model, tokenizer, sources: Iterable[str | UnreadableSource], batch_size: int = 50,
                    truncation: bool = False, chunk_size: int = 1000, progress: Callable[[int], None] | None = None,
                    **generate_kwargs) -> Iterator[TranslationResult]:
    """Translate a stream of sources, `chunk_size` at a time (length-sorted into batches within a chunk), and yield
    one `TranslationResult` per source, in input order, as soon as its chunk is done: long inputs give output
    early, and a bad source (over-long without `truncation`) gets an `error` result instead of losing the run.
    Options are checked now, before any input is read; `progress(n)` is called as `n` more sources finish."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    generate_kwargs = _prepare(model, batch_size, generate_kwargs)

    def stream() -> Iterator[TranslationResult]:
        iterator = iter(sources)
        while chunk := list(islice(iterator, chunk_size)):
            yield from _translate_chunk(model, tokenizer, chunk, batch_size, truncation, generate_kwargs,
                                        strict=False, progress=progress)

    return stream()
