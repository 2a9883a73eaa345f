"""Translation speed on this machine, every system measured in one process, interleaved, with an explicit thread
count: `nat-hf bench speed --system LABEL=MODEL[:key=value,...] ... --output speed.json`.

A system is a saved model (NAT or AR, directory or repo id) with its decoding options, e.g.
`nat-1pass=runs/multi30k_cmlm/best:num_iterations=1,length_beam=1`,
`dag-viterbi=runs/multi30k_dag/best:decoding_strategy=viterbi,viterbi_length_exponent=1.2` or
`ar-greedy=TEACHER_DIR:num_beams=1`. A NAT system takes the options of its model's method (any method of
`nat_hf.methods.METHODS`), each read as the type the method declares; an option its method does not have is an
error naming it. Measured per system: latency at batch 1 (median and p90 over the sentences, one sentence at a time,
the systems taking turns on each sentence), throughput in sentences per second at each batch size (batches of
length-sorted sentences, the same for every system; median of repeats, the systems taking turns), and for NAT
systems whose method calls their options single-pass (`NATMethod.is_single_pass`, e.g. one iteration and one length
candidate) the raw forward passes of the method's
`timing_pass` (e.g. one encoder pass + one decoder pass on the predicted length), the same arithmetic without
`generate`'s bookkeeping: their ratio is the overhead of `generate`. Speed-ups are against each
`--baseline` system (repeat the option for several). The machine is shared and noisy: report medians, and never
compare numbers across runs.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .inference import (
    check_generate_kwargs,
    load_translator,
    output_limit,
    thread_count,
    typed_decoding_options,
    with_output_length_cap,
)


@dataclass
class System:
    label: str
    path: str
    options: dict = field(default_factory=dict)  # generate() arguments


def parse_value(text: str):
    """A number if `text` reads as one, else the text. A NAT system's method options are read again as their
    declared types once the model is loaded (`inference.typed_decoding_options`)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_system(spec: str) -> System:
    """`LABEL=PATH[:key=value,key=value]` -> System."""
    label, sep, rest = spec.partition("=")
    if not sep or not label or not rest:
        raise ValueError(f"system {spec!r} must look like LABEL=MODEL[:key=value,...]")
    path, _, options = rest.partition(":")
    parsed = {}
    for item in filter(None, options.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"option {item!r} of system {label!r} must look like key=value")
        parsed[key] = parse_value(value)
    return System(label, path, parsed)


class Translator:
    """A loaded model with fixed decoding options: `translate(texts)` and, for one-pass NAT decoding (`one_pass`),
    `raw_forward(texts)`.

    The option `backend=ctranslate2` (with `compute_type=default|int8|...`, `beam_size`) runs a Marian-architecture
    AR model converted to CTranslate2 instead of transformers. A directory written by `nat-hf export` runs on ONNX
    Runtime with `threads` intra-op threads (`int8=1`: its quantised graphs); `int8=1` on a torch model quantises
    its linear layers dynamically (`quantize_linear_int8`); `compile=1` compiles a torch model's stacks
    (`compile_stacks`). For an AR model, `drafter=NAT_DIR` (with
    `draft_size`, `draft_iterations`) decodes speculatively (`nat_hf.speculative`: the AR's greedy output, drafted
    by the NAT; `speculative_stats` counts its rounds), and `assistant=AR_DIR` (with `num_assistant_tokens`, ...)
    runs transformers' assisted generation with that smaller AR draft model.

    `min_output_length`: a transformers model whose position tables are shorter is loaded with them extended
    (`extended_position_kwargs`), for timing only: a sinusoidal table is recomputed (its first rows equal the
    trained ones), a learned one re-initialised at random; the arithmetic is that of the trained model, the
    outputs are not. `positions_extended_to` then says so."""

    def __init__(self, system: System, threads: int = 1, min_output_length: int = 0):
        from transformers import AutoConfig

        self.system = system
        self.options = dict(system.options)
        self.backend = self.options.pop("backend", "transformers")
        self.is_nat = self.one_pass = False
        self.positions_extended_to = None
        self.speculative_stats = None
        self.onnx = False
        self.max_batch_size = None  # None: any; transformers' assisted generation translates one sentence a call
        if self.backend == "ctranslate2":
            from .ctranslate import CTranslate2Model

            self.ct2 = CTranslate2Model(system.path, self.options.pop("compute_type", "default"), threads)
            self.model_class, self.parameters = "ctranslate2.Translator", None
            self.max_length = output_limit(AutoConfig.from_pretrained(system.path))  # the converted tables
            return
        if self.backend != "transformers":
            raise ValueError(f"backend must be transformers or ctranslate2, got {self.backend!r}")
        config = AutoConfig.from_pretrained(system.path, trust_remote_code=True)
        extend = min_output_length > output_limit(config)
        # int8: an ONNX export's quantised graphs (nat-hf export --int8); a torch model's linear layers quantised
        # dynamically (torch.ao: int8 weights, activations quantised per call)
        int8 = bool(self.options.pop("int8", False))
        compiled = bool(self.options.pop("compile", False))
        from .onnx_runtime import is_onnx_export

        self.onnx = is_onnx_export(system.path)
        if self.onnx and extend:
            raise ValueError(f"{system.label}: an ONNX export cannot be timed past its {output_limit(config)} "
                             "positions")
        self.model, self.tokenizer = load_translator(
            system.path, int8=int8 and self.onnx, threads=threads if self.onnx else None,
            **(extended_position_kwargs(config, min_output_length) if extend else {}))
        if int8 and not self.onnx:
            self.model = quantize_linear_int8(self.model)
        if compiled:
            if self.onnx:
                raise ValueError(f"{system.label}: compile=1 compiles a torch model; {system.path} is an ONNX export "
                                 "(it runs on ONNX Runtime)")
            self.model = compile_stacks(self.model)
        self.positions_extended_to = min_output_length if extend else None
        self.is_nat = getattr(self.model, "nat_method", None) is not None
        # the method's options as it declares them (`viterbi_length_exponent=1` is the float 1.0), checked now: a
        # bad value or an option the model's method does not have is a ValueError naming it, before any timing
        self.options = typed_decoding_options(self.model, self.options)
        drafter, assistant = self.options.pop("drafter", None), self.options.pop("assistant", None)
        if drafter is not None:
            from .speculative import SpeculativeStats, speculative_kwargs

            self.speculative_stats = SpeculativeStats()
            self.options.update(speculative_kwargs(self.model, load_translator(str(drafter))[0],
                                                   self.options.pop("draft_size", None),
                                                   self.options.pop("draft_iterations", 1), self.speculative_stats))
        if assistant is not None:
            self.options["assistant_model"] = load_translator(str(assistant))[0]
            self.max_batch_size = 1
        check_generate_kwargs(self.model, self.options)
        self.options = with_output_length_cap(self.model, self.options)
        generation = self.model.generation_config
        # the NAT method's decoding options, resolved once (call options > generation config > method defaults)
        self.nat_options = None if not self.is_nat else {
            name: self.options.get(name, getattr(generation, name, default))
            for name, default in self.model.nat_method.option_defaults().items()}
        # raw forward passes are torch modules': none for an ONNX export
        self.one_pass = self.is_nat and not self.onnx and self.model.nat_method.is_single_pass(self.nat_options)
        self.model_class = type(self.model).__name__ + (" (int8)" if int8 else "") + (" (compiled)" if compiled else "")
        self.parameters = None if self.onnx else self.model.num_parameters()
        self.max_length = output_limit(self.model.config)

    def reported_options(self) -> dict:
        """The system's options as given, NAT method options with their declared types (for the JSON)."""
        typed = self.options if self.is_nat else {}
        return {name: typed.get(name, value) for name, value in self.system.options.items()}

    def encode(self, texts: list[str]) -> dict:
        return self.tokenizer(texts, return_tensors="pt", padding=True)

    def reset_speculative_stats(self) -> None:
        if self.speculative_stats is not None:
            self.speculative_stats.__init__()

    @torch.no_grad()
    def translate(self, texts: list[str]) -> list[str]:
        if self.backend == "ctranslate2":
            return self.ct2.generate_texts(texts, **self.options)
        output = self.model.generate(**self.encode(texts), **self.options)
        return self.tokenizer.batch_decode(output, skip_special_tokens=True)

    @torch.no_grad()
    def raw_forward(self, texts: list[str]) -> None:
        """The arithmetic of one-pass decoding without `generate`'s bookkeeping, as the model's method defines it
        (`NATMethod.timing_pass`; e.g. `cmlm`/`vanilla`/`glat`: one encoder pass, the length prediction, and one
        decoder pass with output projection on `<mask>` inputs of the predicted length)."""
        batch = self.encode(texts)
        self.model.nat_method.timing_pass(self.model, batch["input_ids"], batch["attention_mask"].bool())


def quantize_linear_int8(model):
    """`model` with every `nn.Linear` replaced by torch's dynamically quantised int8 version (weights int8,
    activations quantised at each call): the torch-side counterpart of ONNX Runtime's dynamic quantisation."""
    import warnings

    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao; it still works here
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def compile_stacks(model):
    """`model` with its encoder and decoder stacks and its output projection compiled by `torch.compile` (dynamic
    shapes: one compilation serves every batch size and length); `generate`'s Python loop stays eager. The first
    calls compile (tens of seconds): the timing warm-up absorbs them."""
    for owner, name in ((model.model, "encoder"), (model.model, "decoder"), (model, "lm_head")):
        setattr(owner, name, torch.compile(getattr(owner, name), dynamic=True))
    return model


def extended_position_kwargs(config, length: int) -> dict:
    """`from_pretrained` arguments that give a model source and target position tables for `length` tokens."""
    names = (("max_source_positions", "max_target_positions") if hasattr(config, "max_target_positions")
             else ("max_position_embeddings",))
    return {**{name: max(getattr(config, name), length) for name in names}, "ignore_mismatched_sizes": True}


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def machine(threads: int) -> dict:
    cpu = platform.processor() or "unknown"
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": threads, "torch": torch.__version__,
            # to the minute, in UTC: records of one day sort by when they were measured (the newest is the headline)
            "commit": commit or None, "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def benchmark_speed(systems: list[System], sentences: list[str], batch_sizes: list[int], threads: int,
                    repeats: int = 3, baselines: list[str] = (), warmup: int = 3) -> dict:
    """Measure every system on `sentences`; see the module docstring. Speed-ups are given against each of
    `baselines` (labels of systems)."""
    if not systems:
        raise ValueError("give at least one system")
    if len({system.label for system in systems}) != len(systems):
        raise ValueError("system labels must be unique")
    unknown = [label for label in baselines if label not in {system.label for system in systems}]
    if unknown:
        raise ValueError(f"baseline(s) {unknown} are not among the systems")
    torch.set_num_threads(threads)
    translators = [Translator(system, threads) for system in systems]
    for translator in translators:  # first calls allocate; do not time them
        for sentence in sentences[:warmup]:
            translator.translate([sentence])

    latency = {t.system.label: [] for t in translators}
    raw = {t.system.label: [] for t in translators if t.one_pass}
    outputs = {t.system.label: [] for t in translators}  # batch-1 translations, to compare systems
    for translator in translators:
        translator.reset_speculative_stats()  # the counts of the batch-1 pass: one call per sentence
    # The raw forward passes are jobs of their own in the rotation: run right after `generate` on the same model,
    # they would find its weights in cache, an advantage `generate` (run after another model) does not have.
    jobs = [(t.system.label, t.translate, latency) for t in translators]
    jobs += [(t.system.label, t.raw_forward, raw) for t in translators if t.one_pass]
    for index, sentence in enumerate(sentences):
        for label, function, times in jobs[index % len(jobs):] + jobs[: index % len(jobs)]:  # rotate the order
            start = time.perf_counter()
            result = function([sentence])
            times[label].append(time.perf_counter() - start)
            if times is latency:
                outputs[label].append(result[0])
    speculative = {t.system.label: speculative_report(t.speculative_stats) for t in translators
                   if t.speculative_stats is not None}

    throughput = {t.system.label: {} for t in translators}
    # batches of similar length, as `nat-hf translate` makes them: the same batches for every system
    by_length = sorted(sentences, key=len)
    for batch_size in batch_sizes:
        batches = [by_length[i : i + batch_size] for i in range(0, len(by_length), batch_size)]
        able = [t for t in translators if t.max_batch_size is None or batch_size <= t.max_batch_size]
        runs = {t.system.label: [] for t in able}
        for repeat in range(repeats):
            turn = able[repeat % len(able):] + able[: repeat % len(able)]
            for translator in turn:
                seconds = sum(timed(translator.translate, batch) for batch in batches)
                runs[translator.system.label].append(len(sentences) / seconds)
        for translator in translators:  # null: the system cannot translate batches of this size
            values = runs.get(translator.system.label)
            throughput[translator.system.label][str(batch_size)] = round(statistics.median(values), 2) if values \
                else None

    results = {"machine": machine(threads), "sentences": len(sentences), "repeats": repeats,
               "batch_sizes": batch_sizes, "batching": "sorted by character length", "baselines": list(baselines),
               "systems": {}}
    for translator in translators:
        label = translator.system.label
        entry = {
            "model": translator.system.path, "model_class": translator.model_class,
            "parameters": translator.parameters, "options": translator.reported_options(),
            "latency_ms": {"median": round(1000 * statistics.median(latency[label]), 2),
                           "p90": round(1000 * percentile(latency[label], 0.9), 2)},
            "throughput_sentences_per_second": throughput[label],
        }
        if label in raw:
            entry["raw_forward_ms"] = round(1000 * statistics.median(raw[label]), 2)
        if label in speculative:
            entry["speculative"] = speculative[label]
        results["systems"][label] = entry
    for entry in results["systems"].values():
        entry["speedup"] = {}
        for baseline in baselines:
            base = results["systems"][baseline]
            entry["speedup"][baseline] = {
                "latency": round(base["latency_ms"]["median"] / entry["latency_ms"]["median"], 2),
                "throughput": {size: None if value is None or base["throughput_sentences_per_second"][size] is None
                               else round(value / base["throughput_sentences_per_second"][size], 2)
                               for size, value in entry["throughput_sentences_per_second"].items()},
            }
    for label, entry in results["systems"].items():  # share of batch-1 outputs equal to each baseline's
        entry["same_output_as"] = {baseline: round(sum(a == b for a, b in zip(outputs[label], outputs[baseline],
                                                                              strict=True)) / len(sentences), 4)
                                   for baseline in baselines}
    return results


LENGTH_BUCKETS = ((1, 10), (11, 20), (21, 30), (31, None))


def speculative_report(stats) -> dict:
    """`SpeculativeStats.summary()` (rounded) and, by output length (tokens, end-of-sentence included), the
    sentences, AR forward passes per sentence and tokens per round."""
    report = {name: round(value, 3) if isinstance(value, float) else value for name, value in stats.summary().items()}
    by_length = {}
    for low, high in LENGTH_BUCKETS:
        rows = [row for row, tokens in enumerate(stats.output_tokens) if tokens >= low and (high is None or
                                                                                             tokens <= high)]
        if not rows:
            continue
        passes = sum(stats.ar_forward_passes[row] for row in rows)
        by_length[f"{low}-{high}" if high else f"{low}+"] = {
            "sentences": len(rows), "ar_forward_passes_per_sentence": round(passes / len(rows), 2),
            "tokens_per_round": round(sum(stats.output_tokens[row] for row in rows) / passes, 2),
            "accepted_per_round": round(sum(stats.accepted_tokens[row] for row in rows) / passes, 2)}
    report["by_output_length"] = by_length
    return report


@torch.no_grad()
def decode_fixed_length(translator: Translator, input_ids: torch.Tensor, length: int) -> None:
    """Translate one synthetic source into exactly `length` tokens: AR decoding forced to that many steps,
    NAT decoding (the method's, with the configured options) on that target length."""
    options = translator.options
    if translator.backend == "ctranslate2":
        tokens = [translator.ct2.tokenizer.convert_ids_to_tokens(input_ids[0].tolist())]
        translator.ct2.translator.translate_batch(tokens, beam_size=options.get("beam_size", 1),
                                                  min_decoding_length=length, max_decoding_length=length)
        return
    model = translator.model
    if not translator.is_nat:
        model.generate(input_ids, **{**options, "min_new_tokens": length, "max_new_tokens": length})
        return
    mask = torch.ones_like(input_ids, dtype=torch.bool)
    decoding = {**translator.nat_options, "max_length": length, "return_dict_in_generate": False}
    model.nat_method.decode(model, input_ids, mask, decoding, forced_lengths=torch.full((input_ids.shape[0],), length))


def benchmark_length_cost(systems: list[System], lengths: list[int], threads: int, repeats: int = 5) -> dict:
    """Batch-1 latency as the output grows (synthetic sources of the same length as the output). A model whose
    position tables are shorter than the longest length is timed with them extended (see `Translator`)."""
    torch.set_num_threads(threads)
    translators = [Translator(system, threads, min_output_length=max(lengths)) for system in systems]
    for translator in translators:
        if max(lengths) > translator.max_length:
            raise ValueError(f"{translator.system.label} produces at most {translator.max_length} tokens; "
                             f"drop the lengths above")
    generator = torch.Generator().manual_seed(0)
    vocab_size = min(t.model.config.vocab_size for t in translators if t.backend == "transformers")
    eos = next(t.model.config.eos_token_id for t in translators if t.backend == "transformers")
    table = {t.system.label: {} for t in translators}
    for length in lengths:
        source = torch.randint(5, vocab_size, (1, length), generator=generator)
        source[0, -1] = eos
        times = {t.system.label: [] for t in translators}
        for repeat in range(repeats + 1):
            turn = translators[repeat % len(translators):] + translators[: repeat % len(translators)]
            for translator in turn:
                seconds = timed(decode_fixed_length, translator, source, length)
                if repeat > 0:  # the first round warms up
                    times[translator.system.label].append(seconds)
        for label, values in times.items():
            table[label][str(length)] = round(1000 * statistics.median(values), 2)
    extended = {t.system.label: t.positions_extended_to for t in translators if t.positions_extended_to}
    return {"machine": machine(threads), "repeats": repeats, "lengths": lengths, "latency_ms": table,
            "positions_extended_to": extended}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="nat-hf bench speed", description=__doc__.splitlines()[0])
    parser.add_argument("--system", action="append", required=True, type=parse_system,
                        help="LABEL=MODEL[:key=value,...] (generate options); repeat for each system")
    parser.add_argument("--source", type=Path, required=True, help="sentences, one per line")
    parser.add_argument("--sentences", type=int, default=100, help="how many of them (>= 100 for the latency)")
    parser.add_argument("--batch-sizes", default="1,64", help="comma-separated throughput batch sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=thread_count, required=True, help="torch CPU threads (state it: no default)")
    parser.add_argument("--baseline", action="append", default=[],
                        help="label of a system the speed-ups are against; repeat for several")
    parser.add_argument("--output", type=Path, help="write the JSON here (it is printed too)")
    parser.add_argument("--lengths", help="also time batch-1 decoding of synthetic outputs of these lengths, "
                        "e.g. 8,16,32,64,128,256 (the cost-vs-length table); position tables shorter than the "
                        "longest are extended for this table only")
    args = parser.parse_args(argv)
    sentences = [line for line in args.source.read_text(encoding="utf-8").splitlines() if line.strip()]
    results = benchmark_speed(args.system, sentences[: args.sentences],
                              [int(size) for size in args.batch_sizes.split(",")], args.threads, args.repeats,
                              args.baseline)
    if args.lengths:
        results["length_cost"] = benchmark_length_cost(args.system, [int(n) for n in args.lengths.split(",")],
                                                       args.threads, args.repeats)
    text = json.dumps(results, indent=1)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    return results


if __name__ == "__main__":
    main()
