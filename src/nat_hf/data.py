"""Parallel data for NAT training: loading (`datasets`), tokenisation (cached `Dataset.map`), token-budget
length-bucketed batches, and the collator shared by our trainer and `Seq2SeqTrainer`.

Three sources are understood:

- a local directory of line-aligned text files in the Multi30k layout, `{split}.{lang}` (e.g. `train.en`);
- JSON-lines files `{split}.jsonl` with one object per line, either `{"translation": {"en": ..., "de": ...}}` or
  `{"en": ..., "de": ...}`;
- a Hub dataset id (for users online), with the same two column layouts.
"""

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

SOURCE, TARGET = "source", "target"


class DataError(ValueError):
    """Missing, misaligned or empty training data."""


def read_text_file(path: Path) -> str:
    """A UTF-8 text file's content (universal newlines); `DataError` naming the file and the line of the first
    byte that is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")  # again, in one piece: the error's offset is then the file's
        except UnicodeDecodeError as error:
            line = raw[: error.start].count(b"\n") + 1
            raise DataError(f"{path} is not UTF-8 text: line {line} (byte {error.start}): {error.reason}") from None
        raise


def read_lines(path: str | Path) -> list[str]:
    """The lines of a text file (one sentence each), without the final newline; `DataError` if missing or not
    UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing data file {path}")
    lines = read_text_file(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_parallel_text(data_dir: str | Path, split: str, source_lang: str, target_lang: str) -> dict[str, list[str]]:
    """Read `{split}.{source_lang}` and `{split}.{target_lang}`; raise `DataError` on a missing file, different
    line counts or an empty line (which would silently teach the model to produce nothing)."""
    data_dir = Path(data_dir)
    sides = {}
    for column, lang in ((SOURCE, source_lang), (TARGET, target_lang)):
        path = data_dir / f"{split}.{lang}"
        lines = read_lines(path)
        empty = [number for number, line in enumerate(lines, start=1) if not line.strip()]
        if empty:
            raise DataError(f"{path} has {len(empty)} empty line(s), first at line {empty[0]}")
        sides[column] = lines
    if len(sides[SOURCE]) != len(sides[TARGET]):
        raise DataError(f"{data_dir}/{split}.{source_lang} has {len(sides[SOURCE])} lines but "
                        f"{split}.{target_lang} has {len(sides[TARGET])}: the files are not aligned")
    if not sides[SOURCE]:
        raise DataError(f"{data_dir}/{split}.{source_lang} is empty")
    return sides


def _pairs_from_records(records, source_lang: str, target_lang: str, where: str) -> dict[str, list[str]]:
    sources, targets = [], []
    for index, record in enumerate(records):
        pair = record.get("translation", record)
        if source_lang not in pair or target_lang not in pair:
            raise DataError(f"{where}: record {index} has no {source_lang!r}/{target_lang!r} fields")
        source, target = pair[source_lang], pair[target_lang]
        if not str(source).strip() or not str(target).strip():
            raise DataError(f"{where}: record {index} has an empty side")
        sources.append(source)
        targets.append(target)
    if not sources:
        raise DataError(f"{where} holds no records")
    return {SOURCE: sources, TARGET: targets}


def load_split(
    split: str,
    source_lang: str,
    target_lang: str,
    data_dir: str | Path | None = None,
    dataset_name: str | None = None,
):
    """One split as a `datasets.Dataset` with `source` and `target` string columns."""
    import datasets

    if data_dir is not None:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise DataError(f"data directory {data_dir} does not exist")
        jsonl = data_dir / f"{split}.jsonl"
        if jsonl.is_file():
            records = []
            for number, line in enumerate(read_lines(jsonl), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{jsonl} line {number} is not JSON: {error.msg}") from None
                if not isinstance(record, dict):
                    raise DataError(f"{jsonl} line {number} is not a JSON object")
                records.append(record)
            columns = _pairs_from_records(records, source_lang, target_lang, str(jsonl))
        else:
            columns = read_parallel_text(data_dir, split, source_lang, target_lang)
        return datasets.Dataset.from_dict(columns)
    if dataset_name is None:
        raise DataError("give a data directory (data.data_dir or $NAT_HF_DATA_DIR) or a Hub dataset id")
    available = datasets.get_dataset_split_names(dataset_name)
    if split not in available:
        raise DataError(f"{dataset_name} has no split {split!r} (it has {available})")
    hub = datasets.load_dataset(dataset_name, split=split)
    return datasets.Dataset.from_dict(_pairs_from_records(hub, source_lang, target_lang, f"{dataset_name}:{split}"))


def tokenize_split(dataset, tokenizer, cache_dir: str | Path | None = None):
    """Add `input_ids` and `labels` (both closed by `</s>`) with a cached, batched `Dataset.map`; the cache key
    covers the text and the tokenizer, so a changed vocabulary is never served stale ids."""
    def encode(batch):
        return {
            "input_ids": tokenizer(batch[SOURCE], add_special_tokens=True)["input_ids"],
            "labels": tokenizer(batch[TARGET], add_special_tokens=True)["input_ids"],
        }

    cache_file = None
    if cache_dir is not None:
        key = hashlib.sha256(dataset._fingerprint.encode() + tokenizer.backend_tokenizer.to_str().encode())
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        cache_file = str(Path(cache_dir) / f"tokenized-{key.hexdigest()[:16]}.arrow")
    return dataset.map(encode, batched=True, cache_file_name=cache_file, desc="tokenizing")


def token_budget_batches(
    lengths: Sequence[int], max_tokens: int, seed: int, shuffle: bool = True
) -> list[list[int]]:
    """Group example indices into batches of similar length whose padded size (rows x longest) stays within
    `max_tokens`. Examples are sorted by length (ties broken at random when `shuffle`), cut into batches, and
    the batch order is shuffled; the same seed gives the same batches.

    Raises `DataError` if a single example exceeds the budget (it could never be trained on)."""
    rng = random.Random(seed)
    too_long = [index for index, length in enumerate(lengths) if length > max_tokens]
    if too_long:
        raise DataError(f"{len(too_long)} example(s) are longer than max_tokens={max_tokens} "
                        f"(first: index {too_long[0]}, {lengths[too_long[0]]} tokens)")
    tiebreak = [rng.random() for _ in lengths] if shuffle else list(range(len(lengths)))
    order = sorted(range(len(lengths)), key=lambda index: (lengths[index], tiebreak[index]))
    batches, current, longest = [], [], 0
    for index in order:
        longest_if_added = max(longest, lengths[index])
        if current and longest_if_added * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest_if_added = [], lengths[index]
        current.append(index)
        longest = longest_if_added
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


@dataclass
class DataCollatorForNAT:
    """Pad `input_ids` (+ `attention_mask`) and `labels` of tokenised examples into right-padded tensors.

    Labels are padded with `pad_token_id` (the model also accepts -100). Works as `data_collator` of
    `Seq2SeqTrainer` and in our own loop. Extra string columns are dropped.
    """

    pad_token_id: int

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        batch = {"input_ids": self._pad([feature["input_ids"] for feature in features])}
        batch["attention_mask"] = (batch["input_ids"] != self.pad_token_id).long()
        if "labels" in features[0]:
            labels = [[token for token in feature["labels"] if token != -100] for feature in features]
            batch["labels"] = self._pad(labels)
        return batch

    def _pad(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        width = max(len(sequence) for sequence in sequences)
        padded = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            padded[row, : len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
        return padded
