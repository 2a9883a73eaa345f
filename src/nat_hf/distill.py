"""Sequence-level knowledge distillation (Kim & Rush, 2016, "Sequence-Level Knowledge Distillation"): an
autoregressive teacher translates the source side of a corpus with beam search, and the NAT model is trained on
its outputs instead of the references. This simplifies the targets (fewer modes), the largest single quality
lever of NAT models (Gu et al., 2018; Zhou et al., 2020).

    nat-hf distill TEACHER --data-dir DIR --output-dir OUT [--splits train] [--num-beams 4] [--bleu-split val]

Any `AutoModelForSeq2SeqLM` teacher works (a directory or a Hub repo id: our AR baselines, MarianMT, T5, BART).
The output directory has the input's layout (`{split}.{src}`, a copy, and `{split}.{tgt}`, the teacher's
translations), so `nat-hf train` takes it with `data.data_dir=OUT`. The work is cut into shards of the corpus;
each finished shard is kept, so a killed run restarts where it stopped and produces the same file.
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from .data import DataError, read_lines, read_parallel_text
from .inference import thread_count, translate_texts


class DistillError(ValueError):
    """Distillation settings that cannot be honoured (e.g. a restart with a different teacher)."""


def load_teacher(name_or_path: str, device: str = "cpu"):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(name_or_path, trust_remote_code=True).to(device).eval()
    return model, AutoTokenizer.from_pretrained(name_or_path)


def teacher_translate(model, tokenizer, sources: list[str], num_beams: int, max_new_tokens: int,
                      batch_size: int) -> list[str]:
    """Beam-search translations, batched by length, in input order."""
    return translate_texts(model, tokenizer, sources, batch_size, num_beams=num_beams, max_new_tokens=max_new_tokens)


def distill_split(model, tokenizer, sources: list[str], shard_dir: Path, settings: dict, progress) -> list[str]:
    """Translate `sources` shard by shard, reusing shards already on disk."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    shard_size = settings["shard_size"]
    translations = []
    for start in range(0, len(sources), shard_size):
        shard = shard_dir / f"{start // shard_size:06d}.txt"
        chunk = sources[start : start + shard_size]
        if not shard.is_file():
            outputs = teacher_translate(model, tokenizer, chunk, settings["num_beams"], settings["max_new_tokens"],
                                        settings["batch_size"])
            staging = shard.with_suffix(".staging")
            staging.write_text(json.dumps(outputs, ensure_ascii=False), encoding="utf-8")
            staging.rename(shard)  # a shard exists only once it is complete
        outputs = json.loads(shard.read_text(encoding="utf-8"))
        if len(outputs) != len(chunk):
            raise DistillError(f"{shard} holds {len(outputs)} lines for {len(chunk)} sources; delete it to redo it")
        translations += outputs
        progress.update(len(chunk))
    return translations


def distill(
    teacher: str,
    data_dir: str | Path,
    output_dir: str | Path,
    splits: list[str] = ("train",),
    source_lang: str = "en",
    target_lang: str = "de",
    num_beams: int = 4,
    max_new_tokens: int = 128,
    batch_size: int = 64,
    shard_size: int = 1000,
    bleu_split: str | None = None,
    device: str = "cpu",
) -> dict:
    """Distil `splits` of `data_dir` into `output_dir` and return the report (also written as
    `distill_report.json`). Empty teacher outputs are replaced by the reference and listed in the report."""
    from tqdm.auto import tqdm

    data_dir, output_dir = Path(data_dir), Path(output_dir)
    for name, value in (("num_beams", num_beams), ("max_new_tokens", max_new_tokens), ("batch_size", batch_size),
                        ("shard_size", shard_size)):
        if value < 1:
            raise DistillError(f"{name} must be >= 1, got {value}")
    pairs = {split: read_parallel_text(data_dir, split, source_lang, target_lang) for split in splits}
    settings = {"teacher": str(teacher), "num_beams": num_beams, "max_new_tokens": max_new_tokens,
                "batch_size": batch_size, "shard_size": shard_size, "source_lang": source_lang,
                "target_lang": target_lang, "data_dir": str(data_dir.resolve())}
    shards_root = output_dir / ".shards"
    settings_file = shards_root / "settings.json"
    if settings_file.is_file():
        previous = json.loads(settings_file.read_text())
        if previous != settings:
            changed = {key: (previous.get(key), value) for key, value in settings.items() if previous.get(key) != value}
            raise DistillError(f"{output_dir} holds shards made with other settings {changed}; use another "
                               "output directory or delete it")
    shards_root.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(settings, indent=1))

    model, tokenizer = load_teacher(teacher, device)
    report = {**settings, "splits": {}}
    for split, columns in pairs.items():
        start = time.perf_counter()
        with tqdm(total=len(columns["source"]), desc=f"distilling {split}", unit="sent") as progress:
            outputs = distill_split(model, tokenizer, columns["source"], shards_root / split, settings, progress)
        empty = [line for line, text in enumerate(outputs, start=1) if not text.strip()]
        for line in empty:
            outputs[line - 1] = columns["target"][line - 1]
        shutil.copyfile(data_dir / f"{split}.{source_lang}", output_dir / f"{split}.{source_lang}")
        target_file = output_dir / f"{split}.{target_lang}"
        staging = target_file.with_name(target_file.name + ".staging")
        staging.write_text("\n".join(outputs) + "\n", encoding="utf-8")
        staging.rename(target_file)
        report["splits"][split] = {"sentences": len(outputs), "seconds": round(time.perf_counter() - start, 1),
                                   "empty_outputs_replaced_by_reference": empty}
    if bleu_split is not None:
        from .metrics import load_sacrebleu

        sources = read_lines(data_dir / f"{bleu_split}.{source_lang}")
        references = read_lines(data_dir / f"{bleu_split}.{target_lang}")
        start = time.perf_counter()
        hypotheses = teacher_translate(model, tokenizer, sources, num_beams, max_new_tokens, batch_size)
        scores = load_sacrebleu().compute(predictions=hypotheses, references=references)
        report["teacher_bleu"] = {"split": bleu_split, "bleu": round(scores["bleu"], 2),
                                  "chrf": round(scores["chrf"], 2), "signature": scores["signature"],
                                  "seconds": round(time.perf_counter() - start, 1)}
    (output_dir / "distill_report.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="nat-hf distill", description=__doc__.splitlines()[0])
    parser.add_argument("teacher", help="an AutoModelForSeq2SeqLM directory or Hub repo id")
    parser.add_argument("--data-dir", required=True, type=Path, help="{split}.{lang} text files")
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--splits", nargs="+", default=["train"])
    parser.add_argument("--source-lang", default="en")
    parser.add_argument("--target-lang", default="de")
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=1000, help="sentences per resumable shard")
    parser.add_argument("--bleu-split", help="also score the teacher on this split against its references")
    parser.add_argument("--threads", type=thread_count)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = distill(args.teacher, args.data_dir, args.output_dir, args.splits, args.source_lang,
                         args.target_lang, args.num_beams, args.max_new_tokens, args.batch_size, args.shard_size,
                         args.bleu_split, args.device)
    except (DataError, DistillError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    print(json.dumps({key: value for key, value in report.items() if key != "splits"}, indent=1))
    return report


if __name__ == "__main__":
    main()
