"""Translation quality and the NAT failure modes: `nat-hf bench quality --system LABEL=MODEL[:opts] ... --data-dir
DIR --splits val test_2016_flickr --output quality.json`.

Per system and split: sacreBLEU and chrF; the share of consecutive repeated tokens (the classic symptom of
one-pass NAT decoding mixing modes), beside the same share in the references; the length error against the
reference (mean relative and mean absolute, in subword tokens); and BLEU by source-length bucket. A NAT system takes
its method's decoding options (`LABEL=MODEL:decoding_strategy=viterbi,viterbi_length_exponent=1.2` for a `dag`
model), read as the types the method declares, as in `nat-hf bench speed`, whose system options all apply
(`drafter=NAT_DIR` speculative decoding, `assistant=AR_DIR` assisted generation, decoded one sentence at a time
as transformers requires).
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .bench import System, Translator, machine, parse_system
from .data import read_parallel_text
from .inference import thread_count, translate_texts

LENGTH_BUCKETS = ((1, 10), (11, 20), (21, 30), (31, 10_000))


def repeated_token_share(token_lists: list[list[str]]) -> float:
    """Share of tokens equal to the token right before them."""
    repeats = sum(a == b for tokens in token_lists for a, b in zip(tokens, tokens[1:], strict=False))
    total = sum(len(tokens) for tokens in token_lists)
    return repeats / max(total, 1)


def quality_report(model, tokenizer, sources: list[str], references: list[str], metric, batch_size: int = 50,
                   translate: Callable[[list[str]], list[str]] | None = None, **generate_kwargs) -> dict:
    """Scores of `model` on one split (see the module docstring); `translate` (texts -> translations, e.g. a
    CTranslate2 model's) replaces `model.generate`, `tokenizer` then only counts tokens."""
    start = time.perf_counter()
    if translate is None:
        hypotheses = translate_texts(model, tokenizer, sources, batch_size, **generate_kwargs)
    else:
        hypotheses = [text for begin in range(0, len(sources), batch_size)
                      for text in translate(sources[begin : begin + batch_size])]
    seconds = time.perf_counter() - start
    scores = metric.compute(predictions=hypotheses, references=references)
    hypothesis_tokens = [tokenizer.tokenize(text) for text in hypotheses]
    reference_tokens = [tokenizer.tokenize(text) for text in references]
    source_lengths = [len(tokenizer.tokenize(text)) for text in sources]
    relative_errors = [(len(h) - len(r)) / max(len(r), 1) for h, r in zip(hypothesis_tokens, reference_tokens,
                                                                          strict=True)]
    buckets = {}
    for low, high in LENGTH_BUCKETS:
        members = [i for i, length in enumerate(source_lengths) if low <= length <= high]
        if members:
            bucket = metric.compute(predictions=[hypotheses[i] for i in members],
                                    references=[references[i] for i in members])
            name = f"{low}-{high}" if high < 10_000 else f"{low}+"
            buckets[name] = {"sentences": len(members), "bleu": round(bucket["bleu"], 2)}
    return {
        "sentences": len(sources), "bleu": round(scores["bleu"], 2), "chrf": round(scores["chrf"], 2),
        "signature": scores["signature"],
        "repeated_token_share": round(repeated_token_share(hypothesis_tokens), 4),
        "reference_repeated_token_share": round(repeated_token_share(reference_tokens), 4),
        "length_error_relative_mean": round(statistics.mean(relative_errors), 4),
        "length_error_absolute_mean": round(statistics.mean(
            abs(len(h) - len(r)) for h, r in zip(hypothesis_tokens, reference_tokens, strict=True)), 3),
        "bleu_by_source_length": buckets, "decode_seconds": round(seconds, 1), "hypotheses": hypotheses,
    }


def paired_bootstrap(baseline: list[str], system: list[str], references: list[str], samples: int = 1000) -> dict:
    """sacreBLEU's paired bootstrap resampling of BLEU (Koehn, 2004, "Statistical Significance Tests for Machine
    Translation Evaluation"): ``p_value`` of the system's difference to the baseline on `samples` resamples of the
    sentences (sacreBLEU's fixed seed: the same inputs give the same value) and ``ci95``, the half-width of the
    system's 95% confidence interval. Same BLEU settings as `metrics.load_sacrebleu` (13a, exp smoothing)."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    if not len(baseline) == len(system) == len(references):
        raise ValueError(f"paired_bootstrap needs one hypothesis per reference, got {len(baseline)} baseline, "
                         f"{len(system)} system and {len(references)} references")
    _, scores = PairedTest([("baseline", baseline), ("system", system)], {"BLEU": BLEU()}, [references],
                           test_type="bs", n_samples=samples)()
    result = scores["BLEU"][1]
    return {"p_value": round(float(result.p_value), 4), "ci95": round(float(result.ci), 2), "samples": samples}


def benchmark_quality(systems: list[System], data_dir: Path, splits: list[str], source_lang: str,
                      target_lang: str, threads: int, batch_size: int = 50, baselines: list[str] = ()) -> dict:
    """Every system on every split (see `quality_report`); with `baselines` (system labels), each system's split
    also counts its hypotheses identical to each baseline's (`same_output_as`: `{label: [identical, total]}`), e.g.
    an ONNX export against the torch model it came from, and tests its BLEU difference to each baseline's
    (`paired_bootstrap`: `{label: {p_value, ci95, samples}}`, see `paired_bootstrap`)."""
    unknown = sorted(set(baselines) - {system.label for system in systems})
    if unknown:
        raise ValueError(f"--baseline names systems that are not given: {unknown}")
    from .metrics import load_sacrebleu

    torch.set_num_threads(threads)
    metric = load_sacrebleu()
    data = {split: read_parallel_text(data_dir, split, source_lang, target_lang) for split in splits}
    results = {"machine": machine(threads), "data_dir": str(data_dir), "batch_size": batch_size, "systems": {}}
    for system in systems:
        translator = Translator(system, threads)  # options typed and checked before any split is decoded
        size = batch_size if translator.max_batch_size is None else min(batch_size, translator.max_batch_size)
        entry = {"model": system.path, "options": translator.reported_options(), "batch_size": size, "splits": {}}
        for split, columns in data.items():
            if translator.backend == "ctranslate2":  # sources are not blank here: no special case needed
                entry["splits"][split] = quality_report(None, translator.ct2.tokenizer, columns["source"],
                                                        columns["target"], metric, size, translate=translator.translate)
            else:
                entry["splits"][split] = quality_report(translator.model, translator.tokenizer, columns["source"],
                                                        columns["target"], metric, size, **translator.options)
        results["systems"][system.label] = entry
    for entry in results["systems"].values():
        for split, scores in entry["splits"].items():
            scores["same_output_as"] = {
                baseline: [sum(a == b for a, b in zip(scores["hypotheses"],
                                                      results["systems"][baseline]["splits"][split]["hypotheses"],
                                                      strict=True)), len(scores["hypotheses"])]
                for baseline in baselines}
            scores["paired_bootstrap"] = {
                baseline: paired_bootstrap(results["systems"][baseline]["splits"][split]["hypotheses"],
                                           scores["hypotheses"], data[split]["target"])
                for baseline in baselines if entry is not results["systems"][baseline]}
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="nat-hf bench quality", description=__doc__.splitlines()[0])
    parser.add_argument("--system", action="append", required=True, type=parse_system,
                        help="LABEL=MODEL[:key=value,...] (generate options); repeat for each system")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--splits", nargs="+", default=["val", "test_2016_flickr"])
    parser.add_argument("--source-lang", default="en")
    parser.add_argument("--target-lang", default="de")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=thread_count, required=True)
    parser.add_argument("--baseline", action="append", default=[],
                        help="a system label: count each system's hypotheses identical to its, and test each BLEU "
                             "difference to its by paired bootstrap (repeatable)")
    parser.add_argument("--output", type=Path, help="write the JSON here (hypotheses included)")
    args = parser.parse_args(argv)
    results = benchmark_quality(args.system, args.data_dir, args.splits, args.source_lang, args.target_lang,
                                args.threads, args.batch_size, args.baseline)
    if args.output:
        args.output.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    summary = {label: {split: {k: v for k, v in scores.items() if k != "hypotheses"}
                       for split, scores in entry["splits"].items()} for label, entry in results["systems"].items()}
    print(json.dumps(summary, indent=1))
    return results


if __name__ == "__main__":
    main()
