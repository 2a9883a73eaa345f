"""Keep `benchmarks/RESULTS.md` generated, never hand-edited.

    python benchmarks/results.py record RUN_DIR --name NAME --command "THE EXACT COMMAND" [--commit SHA]
    python benchmarks/results.py record-bench BENCH.json --name NAME --command "THE EXACT COMMAND" [--gap-to LABEL]
    python benchmarks/results.py render

`record` turns a finished training run (its `log.jsonl`, `results.json`, `train_config.yaml`) into
`benchmarks/records/NAME.json` (with the command, commit, date and machine) plus a learning-curve plot;
`record-bench` stores the JSON of `nat-hf bench speed` or `nat-hf bench quality` with its command, and plots
latency against batch size and (with a cost-vs-length table) speed-up against output length; `render` rebuilds
RESULTS.md from every record, and the README's results block (between `README_BEGIN` and `README_END`) from the
latest speed record and the quality record that shares most of its systems.
"""

import argparse
import datetime
import json
from pathlib import Path

import yaml

from nat_hf.bench import machine  # CPU, threads, torch version, commit, date: one definition

HERE = Path(__file__).resolve().parent
RECORDS = HERE / "records"
RESULTS_MD = HERE / "RESULTS.md"
FRONTIER_SPLIT = "test_2016_flickr"
README = HERE.parent / "README.md"
README_BEGIN = "<!-- results: written by `python benchmarks/results.py render`; do not edit by hand -->"
README_END = "<!-- end of results -->"


# adversarial training's per-window values, averaged per evaluation interval into the curve when a run logs them
ADVERSARIAL_COLUMNS = (("loss_terms", "adversarial"), ("loss_terms", "discriminator"),
                       ("metrics", "discriminator_accuracy"))


def curve(log: list[dict]) -> list[dict]:
    """One row per evaluation: the mean training loss since the previous one, validation loss and BLEU (and, for an
    adversarial run, the mean generator adversarial loss, discriminator loss and accuracy since the previous one)."""
    rows, window, extras = [], [], {}
    for record in log:
        if record["event"] == "train":
            window.append(record["loss"])
            for group, name in ADVERSARIAL_COLUMNS:
                if name in record.get(group, {}):
                    extras.setdefault(name, []).append(record[group][name])
        elif record["event"] == "eval":
            rows.append({"step": record["step"], "train_minutes": round(record["train_seconds"] / 60, 1),
                         "train_loss": round(sum(window) / len(window), 3) if window else None,
                         "valid_loss": round(record["valid_loss"], 3), "valid_bleu": round(record["valid_bleu"], 2),
                         **{name: round(sum(values) / len(values), 3) for name, values in extras.items()}})
            window, extras = [], {}
    return rows


def plot_curve(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in rows]
    figure, loss_axis = plt.subplots(figsize=(7, 4))
    loss_axis.plot(steps, [row["train_loss"] for row in rows], label="train loss")
    loss_axis.plot(steps, [row["valid_loss"] for row in rows], label="valid loss")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("loss")
    bleu_axis = loss_axis.twinx()
    bleu_axis.plot(steps, [row["valid_bleu"] for row in rows], color="tab:green", label="valid BLEU")
    bleu_axis.set_ylabel("validation BLEU (periodic decoding)")
    figure.legend(loc="upper center", ncol=3)
    loss_axis.set_title(title, fontsize=9, pad=24)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def record(run_dir: Path, name: str, command: str, commit: str | None, note: str | None = None) -> Path:
    """Store a finished training run; `note` says what the numbers alone do not (an interruption, contention)."""
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    results = json.loads((run_dir / "results.json").read_text())
    config = yaml.safe_load((run_dir / "train_config.yaml").read_text())
    # the log's first event (a resumed run rewrites train_config.yaml)
    started = log[0].get("time", (run_dir / "train_config.yaml").stat().st_mtime)
    finished = (run_dir / "results.json").stat().st_mtime
    rows = curve(log)
    # a run continued from a saved model (model.init_from) has its architecture there, not in its config
    saved_model = run_dir / "best" / "config.json"
    entry = {
        "name": name,
        "kind": "training",
        "command": command,
        "commit": commit or machine(config["run"]["threads"])["commit"],
        "date": datetime.datetime.fromtimestamp(finished, datetime.UTC).strftime("%Y-%m-%d"),
        "machine": machine(config["run"]["threads"]),
        "wall_minutes": round((finished - started) / 60, 1),
        "config": config,
        "results": results,
        "curve": rows,
        "note": note,
        "model_config": json.loads(saved_model.read_text()) if saved_model.is_file() else None,
    }
    RECORDS.mkdir(exist_ok=True)
    path = RECORDS / f"{name}.json"
    path.write_text(json.dumps(entry, indent=1) + "\n")
    plot_curve(rows, f"{name} ({entry['commit']})", RECORDS / f"{name}.png")
    return path


def describe_decoding(options: dict) -> str:
    """Decoding options in words: AR beam size, Mask-Predict iterations and length beam, else `key value` pairs
    (e.g. a DAG's `decoding_strategy lookahead`). Other keys of `options` (a run's results) are ignored."""
    if "num_beams" in options:
        return "greedy" if options["num_beams"] == 1 else f"beam {options['num_beams']}"
    if "num_iterations" in options:
        return f"{options['num_iterations']} iterations, length beam {options['length_beam']}"
    named = {key: value for key, value in options.items() if key in ("decoding_strategy", "viterbi_length_exponent",
                                                                     "lookahead_weight")}
    return ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in named.items()) or "the method's defaults"


def render_training(entry: dict) -> list[str]:
    results, config, machine_info = entry["results"], entry["config"], entry["machine"]
    model = config["model"]
    family = model.get("family", "nat")
    evaluation = config["eval"]
    kind = model["objective"] if family == "nat" else "AR (Marian architecture)"
    if "decoding" in evaluation:  # eval.decoding, a mapping of the method's options (older runs: flat keys)
        periodic = evaluation["decoding"] or ({"num_beams": 1} if family == "ar" else {})
    else:
        periodic = ({"num_beams": evaluation.get("num_beams", 1)} if family == "ar" else
                    {"num_iterations": evaluation["num_iterations"], "length_beam": evaluation["length_beam"]})
    data = (f"data `{config['data'].get('data_dir') or config['data']['dataset_name']}` "
            f"({config['data']['source_lang']}->{config['data']['target_lang']})")
    saved = entry.get("model_config")
    if model.get("init_from") and saved and saved.get("model_type") == "nat":  # the continued model's own shape
        described = (f"- model: {saved['objective']}, d_model {saved['d_model']}, {saved['encoder_layers']}+"
                     f"{saved['decoder_layers']} layers, {saved['encoder_attention_heads']} heads, FFN "
                     f"{saved['encoder_ffn_dim']}, dropout {saved['dropout']}, continued from `{model['init_from']}`; "
                     f"{data}")
    else:
        described = (f"- model: {kind}, d_model {model['d_model']}, {model['encoder_layers']}+"
                     f"{model['decoder_layers']} layers, {model['attention_heads']} heads, FFN {model['ffn_dim']}, "
                     f"dropout {model['dropout']}; {data}")
    adversarial = config.get("adversarial") or {}
    if adversarial.get("enabled"):
        described += (f"\n- adversarial: weight {adversarial['weight']}, discriminator {adversarial['discriminator']} "
                      f"(lr {adversarial['learning_rate']}, {adversarial['discriminator_steps']} step(s) per generator "
                      f"step, {adversarial['discriminator_warmup_steps']} warm-up steps), Gumbel-softmax temperature "
                      f"{adversarial['temperature_start']} -> {adversarial['temperature_end']} over "
                      f"{adversarial['temperature_anneal_steps']} steps, label smoothing "
                      f"{adversarial['label_smoothing']}")
    lines = [
        f"### {entry['name']}",
        "",
        f"- command: `{entry['command']}`",
        *([f"- note: {entry['note']}"] if entry.get("note") else []),
        f"- commit `{entry['commit']}`, finished {entry['date']}, on {machine_info['cpu']} "
        f"({machine_info['logical_cpus']} logical CPUs, torch {machine_info['torch']}, "
        f"{machine_info['torch_threads']} threads)",
        described,
        f"- budget: {results['steps']} steps ({results['epochs']} full epochs), "
        f"{results['train_seconds'] / 60:.1f} min of training, {entry['wall_minutes']} min wall time in all "
        "(evaluations, vocabulary and final decoding included)",
        f"- best checkpoint: step {results['best_step']} (periodic validation BLEU "
        f"{results['best_valid_bleu']:.2f} with {describe_decoding(periodic)}, first "
        f"{evaluation['max_sentences'] or 'all'} sentences)",
        "",
        f"| split | sacreBLEU | chrF | decoding time ({describe_decoding(results)}, "
        f"batch {evaluation['batch_size']}) |",
        "| --- | --- | --- | --- |",
    ]
    splits = [key.removesuffix("_bleu") for key in results if key.endswith("_bleu") and key != "best_valid_bleu"]
    for split in splits:
        lines.append(f"| {split} | {results[split + '_bleu']:.2f} | {results[split + '_chrf']:.2f} | "
                     f"{results[split + '_decode_seconds']} s |")
    lines += ["", f"sacreBLEU signature: `{results.get('sacrebleu_signature')}`", "",
              f"![learning curve](records/{entry['name']}.png)", ""]
    extras = [name for _, name in ADVERSARIAL_COLUMNS if any(name in row for row in entry["curve"])]
    lines += ["| step | train minutes | train loss | valid loss | valid BLEU (periodic) |"
              + "".join(f" {name.replace('_', ' ')} |" for name in extras),
              "| --- | --- | --- | --- | --- |" + " --- |" * len(extras)]
    lines += [f"| {r['step']} | {r['train_minutes']} | {r['train_loss']} | {r['valid_loss']} | {r['valid_bleu']} |"
              + "".join(f" {r.get(name, '')} |" for name in extras) for r in entry["curve"]]
    return lines + [""]


def record_bench(path: Path, name: str, command: str, gap_to: list[str] | None = None, note: str | None = None,
                 interim: bool = False, side_study: bool = False) -> Path:
    """Store a bench JSON as a record; `gap_to` names quality systems (e.g. the AR teacher) that every other
    system's BLEU is compared with, in extra columns of the quality table. `note` says what the numbers alone do
    not; an `interim` record (e.g. a checkpoint of a run still training) and a `side_study` one (one question, e.g.
    the cost of one option, beside fewer systems than the main comparison) are rendered but never become the README
    headline or the frontier plot."""
    data = json.loads(path.read_text())
    kind = "toy" if "task" in data else \
        "speed" if any("latency_ms" in entry for entry in data["systems"].values()) else "quality"
    unknown = [label for label in gap_to or [] if label not in data["systems"]]
    if kind != "quality" and gap_to:
        raise ValueError("--gap-to only applies to a quality benchmark")
    if unknown:
        raise ValueError(f"--gap-to names systems not in {path}: {unknown}; it has {sorted(data['systems'])}")
    entry = {"name": name, "kind": kind, "command": command, "commit": data["machine"]["commit"],
             "date": data["machine"]["date"], "machine": data["machine"], "data": data, "gap_to": gap_to or [],
             "note": note, "interim": interim, "side_study": side_study}
    if kind == "quality":  # keep the scores, not the hypotheses
        for system in data["systems"].values():
            for scores in system["splits"].values():
                scores.pop("hypotheses", None)
    RECORDS.mkdir(exist_ok=True)
    target = RECORDS / f"{name}.json"
    target.write_text(json.dumps(entry, indent=1, ensure_ascii=False) + "\n")
    if kind == "speed":
        plot_speed(data, name)
    return target


def line_styles(data: dict) -> dict[str, dict]:
    """One colour per system (up to 20), and the line says the kind: NAT solid, transformers AR dashed,
    CTranslate2 dotted."""
    import matplotlib

    def linestyle(model_class: str) -> str:
        return ":" if model_class.startswith("ctranslate2") else "-" if model_class.startswith("NAT") else "--"

    colours = matplotlib.colormaps["tab20"].colors
    return {label: {"color": colours[index % len(colours)], "marker": "o", "linestyle": linestyle(entry["model_class"])}
            for index, (label, entry) in enumerate(data["systems"].items())}


def plot_speed(data: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = line_styles(data)
    figure, axis = plt.subplots(figsize=(8, 5))
    for label, entry in data["systems"].items():
        sizes = sorted(int(size) for size, value in entry["throughput_sentences_per_second"].items()
                       if value is not None)  # None: the system cannot translate batches of that size
        axis.plot(sizes, [1000 * size / entry["throughput_sentences_per_second"][str(size)] for size in sizes],
                  label=label, **styles[label])
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("batch size (sentences)")
    axis.set_ylabel("milliseconds per batch")
    axis.set_title(f"latency vs batch size ({data['machine']['torch_threads']} threads)", fontsize=9)
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    figure.savefig(RECORDS / f"{name}-batch.png", dpi=100)
    plt.close(figure)
    length_cost = data.get("length_cost")
    baseline = (data.get("baselines") or [None])[0]
    if length_cost and baseline in length_cost["latency_ms"]:
        base = length_cost["latency_ms"][baseline]
        figure, axis = plt.subplots(figsize=(8, 5))
        for label, values in length_cost["latency_ms"].items():
            lengths = [int(n) for n in values]
            axis.plot(lengths, [base[str(n)] / values[str(n)] for n in lengths], label=label, **styles[label])
        axis.set_xscale("log", base=2)
        axis.set_xlabel("output length (tokens)")
        axis.set_ylabel(f"speed-up over {baseline} (batch 1)")
        axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        figure.tight_layout()
        figure.savefig(RECORDS / f"{name}-length.png", dpi=100)
        plt.close(figure)


def note_lines(entry: dict) -> list[str]:
    """A bench record's note and interim / side-study flags, as list items."""
    lines = ["- interim: measured on a checkpoint of a run still in progress; not the headline"] \
        if entry.get("interim") else []
    lines += ["- side study: one question beside fewer systems; not the headline"] if entry.get("side_study") else []
    return lines + ([f"- note: {entry['note']}"] if entry.get("note") else [])


def ratio_cell(value) -> str:
    return "n/a" if value is None else f"{value}x"


def render_speed(entry: dict) -> list[str]:
    data, machine_info = entry["data"], entry["machine"]
    sizes = [str(size) for size in data["batch_sizes"]]
    baselines = data.get("baselines", [])
    lines = [f"### {entry['name']}", "", f"- command: `{entry['command']}`",
             f"- commit `{entry['commit']}`, {entry['date']}, on {machine_info['cpu']} ({machine_info['logical_cpus']}"
             f" logical CPUs, torch {machine_info['torch']}, {machine_info['torch_threads']} threads); "
             f"{data['sentences']} sentences, latency: median over the sentences one at a time; throughput: "
             f"median of {data['repeats']} interleaved repeats"
             + (f", batches of sentences {data['batching']}" if data.get("batching") else ""), *note_lines(entry), "",
             "| system | latency batch 1 median (ms) | p90 (ms) | "
             + " | ".join(f"sent/s batch {size}" for size in sizes) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in sizes) + " |"]
    for label, system in data["systems"].items():
        lines.append(f"| {label} | {system['latency_ms']['median']} | {system['latency_ms']['p90']} | "
                     + " | ".join(str(system["throughput_sentences_per_second"][size] or "n/a") for size in sizes)
                     + " |")
    if any(value is None for system in data["systems"].values()
           for value in system["throughput_sentences_per_second"].values()):
        lines += ["", "n/a: the system translates one sentence per call (transformers' assisted generation)."]
    for baseline in baselines:  # ratios of the numbers above, one table per baseline
        lines += ["", f"Speed-up against `{baseline}` (its time / the system's time, > 1 is faster):", "",
                  "| system | latency batch 1 | " + " | ".join(f"throughput batch {size}" for size in sizes) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in sizes) + " |"]
        for label, system in data["systems"].items():
            speedup = system["speedup"][baseline]
            lines.append(f"| {label} | {speedup['latency']}x | "
                         + " | ".join(ratio_cell(speedup["throughput"][size]) for size in sizes) + " |")
    if baselines and all("same_output_as" in system for system in data["systems"].values()):
        lines += ["", "Share of the batch-1 outputs identical to each baseline's:", "",
                  "| system | " + " | ".join(f"same output as {baseline}" for baseline in baselines) + " |",
                  "| --- |" + " --- |" * len(baselines)]
        lines += [f"| {label} | " + " | ".join(f"{system['same_output_as'][baseline]:.2%}" for baseline in baselines)
                  + " |" for label, system in data["systems"].items()]
    drafted = [(label, system["speculative"]) for label, system in data["systems"].items() if "speculative" in system]
    if drafted:
        lines += ["", "Speculative decoding, counted over the batch-1 pass (a round = one AR forward pass; tokens per "
                  "round = accepted drafted tokens + the AR's own token):", "",
                  "| system | AR passes per sentence | tokens per round | accepted drafted tokens per round | "
                  "accepted / drafted | by output length: sentences, passes per sentence, tokens per round |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for label, counts in drafted:
            buckets = "; ".join(f"{name}: {bucket['sentences']}, {bucket['ar_forward_passes_per_sentence']}, "
                                f"{bucket['tokens_per_round']}" for name, bucket in counts["by_output_length"].items())
            lines.append(f"| {label} | {counts['ar_forward_passes_per_sentence']:.2f} | "
                         f"{counts['tokens_per_round']:.2f} | {counts['accepted_per_round']:.2f} | "
                         f"{counts['acceptance_rate']:.2%} | {buckets} |")
    overhead = [(label, system) for label, system in data["systems"].items() if "raw_forward_ms" in system]
    if overhead:
        lines += ["", "One-pass `generate` against its raw forward passes (batch 1; one encoder pass + one decoder "
                  "pass on the predicted length, without `generate`'s bookkeeping):", "",
                  "| system | generate median (ms) | raw forward median (ms) | overhead |", "| --- | --- | --- | --- |"]
        for label, system in overhead:
            ratio = system["latency_ms"]["median"] / system["raw_forward_ms"] - 1
            lines.append(f"| {label} | {system['latency_ms']['median']} | {system['raw_forward_ms']} | {ratio:.0%} |")
    lines += ["", f"![latency vs batch size](records/{entry['name']}-batch.png)", ""]
    if data.get("length_cost"):
        cost = data["length_cost"]
        lengths = [str(n) for n in cost["lengths"]]
        lines += ["Cost against output length (batch 1, synthetic source of the same length, milliseconds):", "",
                  "| system | " + " | ".join(lengths) + " |", "| --- | " + " | ".join("---" for _ in lengths) + " |"]
        lines += [f"| {label} | " + " | ".join(str(values[n]) for n in lengths) + " |"
                  for label, values in cost["latency_ms"].items()]
        extended = cost.get("positions_extended_to") or {}
        if extended:
            lines += ["", "Timed with position tables extended past the trained ones (same arithmetic, outputs "
                      "beyond the trained length meaningless): "
                      + ", ".join(f"{label} to {positions}" for label, positions in extended.items()) + "."]
        if (RECORDS / f"{entry['name']}-length.png").is_file():
            lines += ["", f"![speed-up vs length](records/{entry['name']}-length.png)"]
        lines.append("")
    return lines


def same_output_cell(scores: dict, baseline: str) -> str:
    cell = "{} / {}".format(*scores["same_output_as"][baseline])
    test = scores.get("paired_bootstrap", {}).get(baseline)  # absent for the baseline itself and older records
    return cell if test is None else f"{cell}; p = {test['p_value']}"


def render_quality(entry: dict) -> list[str]:
    data, gap_to = entry["data"], entry.get("gap_to", [])
    lines = [f"### {entry['name']}", "", f"- command: `{entry['command']}`",
             f"- commit `{entry['commit']}`, {entry['date']}, batch {data['batch_size']}", *note_lines(entry), "",
             "| system | split | BLEU | " + "".join(f"BLEU gap to {label} | " for label in gap_to)
             + "chrF | repeated tokens (reference) | length error (relative) | BLEU by source length |",
             "| --- | --- | --- | " + "--- | " * len(gap_to) + "--- | --- | --- | --- |"]
    for label, system in data["systems"].items():
        for split, scores in system["splits"].items():
            buckets = ", ".join(f"{name}: {bucket['bleu']}" for name, bucket in scores["bleu_by_source_length"].items())
            gaps = "".join(f"{scores['bleu'] - data['systems'][other]['splits'][split]['bleu']:+.2f} | "
                           for other in gap_to)
            lines.append(f"| {label} | {split} | {scores['bleu']} | {gaps}{scores['chrf']} | "
                         f"{scores['repeated_token_share']:.2%} ({scores['reference_repeated_token_share']:.2%}) | "
                         f"{scores['length_error_relative_mean']:+.2%} | {buckets} |")
    baselines = next((list(scores.get("same_output_as", {})) for system in data["systems"].values()
                      for scores in system["splits"].values()), [])
    if baselines:
        lines += ["", "Hypotheses identical to each baseline's (sentences identical / sentences) and, where measured, "
                  "the p-value of the BLEU difference to it (paired bootstrap, `nat_hf.quality.paired_bootstrap`; "
                  "< 0.05: unlikely to be chance):", "",
                  "| system | split | " + " | ".join(f"same output as {baseline}" for baseline in baselines) + " |",
                  "| --- | --- |" + " --- |" * len(baselines)]
        for label, system in data["systems"].items():
            for split, scores in system["splits"].items():
                lines.append(f"| {label} | {split} | " + " | ".join(
                    same_output_cell(scores, baseline) for baseline in baselines) + " |")
    return lines + [""]


def plot_frontier(speed: dict, quality: dict, split: str) -> bool:
    """BLEU against batch-1 latency, one point per system measured in both records."""
    points = [(label, speed["data"]["systems"][label]["latency_ms"]["median"], entry["splits"][split]["bleu"])
              for label, entry in quality["data"]["systems"].items()
              if label in speed["data"]["systems"] and split in entry["splits"]]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for label, latency, bleu in points:
        axis.scatter(latency, bleu)
        axis.annotate(label, (latency, bleu), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axis.set_xscale("log")
    axis.set_xlabel("latency at batch 1, median (ms)")
    axis.set_ylabel(f"sacreBLEU ({split})")
    axis.set_title(f"quality/speed frontier: {speed['name']} x {quality['name']}", fontsize=9)
    figure.tight_layout()
    figure.savefig(RECORDS / "frontier.png", dpi=100)
    plt.close(figure)
    return True


def render_toy(entry: dict) -> list[str]:
    """benchmarks/toy_two_mode.py: exact match per method, decoding and seed."""
    data, machine_info = entry["data"], entry["machine"]
    seeds = [str(seed) for seed in data["seeds"]]
    lines = [f"### {entry['name']}", "", f"- command: `{entry['command']}`",
             f"- commit `{entry['commit']}`, {entry['date']}, on {machine_info['cpu']} (torch {machine_info['torch']}, "
             f"{machine_info['torch_threads']} threads); toy task `{data['task']}`, exact match on 500 held-out pairs",
             *note_lines(entry), "",
             "| method | decoding | " + " | ".join(f"seed {seed}" for seed in seeds) + " | mean |",
             "|" + " --- |" * (len(seeds) + 3)]
    for label, system in data["systems"].items():
        for decoding, values in system["exact_match"].items():
            mean = sum(values[seed] for seed in seeds) / len(seeds)
            lines.append(f"| {label} | {decoding} | " + " | ".join(f"{values[seed]:.1%}" for seed in seeds)
                         + f" | {mean:.1%} |")
    return lines + [""]


def readme_summary(speed: dict, quality: dict, split: str) -> list[str]:
    """The README's results block: per system of the speed record, BLEU on `split` (when the quality record has
    it), batch-1 latency, and the speed-ups against each baseline at batch 1 and, when measured, batch 64."""
    data = speed["data"]
    baselines = data.get("baselines", [])
    sizes = ["64"] if 64 in data["batch_sizes"] else []
    header = [f"BLEU {split}", "latency batch 1 (ms)"]
    measures = " / ".join(["latency batch 1", *(f"throughput batch {size}" for size in sizes)])
    header += [f"speed-up vs {baseline}: {measures}" for baseline in baselines]
    lines = [f"Measured on {speed['machine']['cpu']} with {speed['machine']['torch_threads']} torch threads "
             f"(records `{speed['name']}` and `{quality['name']}`; commands, commits and every other figure in "
             "[benchmarks/RESULTS.md](benchmarks/RESULTS.md)):", "",
             "| system | " + " | ".join(header) + " |", "| --- |" + " --- |" * len(header)]
    for label, system in data["systems"].items():
        scores = quality["data"]["systems"].get(label, {}).get("splits", {}).get(split)
        cells = [str(scores["bleu"]) if scores else "not measured", str(system["latency_ms"]["median"])]
        for baseline in baselines:
            speedup = system["speedup"][baseline]
            cells.append(" / ".join([f"{speedup['latency']}x"] + [ratio_cell(speedup["throughput"][size])
                                                                   for size in sizes]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def write_readme_block(lines: list[str]) -> bool:
    """Replace the README's results block with `lines`; False when the README has no block."""
    if not README.is_file():
        return False
    text = README.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    README.write_text(head + "\n".join([README_BEGIN, *lines, README_END]) + tail)
    return True


def render() -> None:
    entries = [json.loads(path.read_text()) for path in sorted(RECORDS.glob("*.json"))]
    lines = ["# Results", "",
             "Generated by `python benchmarks/results.py render` from `benchmarks/records/*.json`; do not edit by "
             "hand. Each record names the exact command, commit, date and machine that produced it.", "",
             "## Training runs", ""]
    for entry in entries:
        if entry["kind"] == "training":
            lines += render_training(entry)
    for kind, title, renderer in (("speed", "Speed", render_speed), ("quality", "Quality", render_quality),
                                  ("toy", "Toy tasks", render_toy)):
        chosen = [entry for entry in entries if entry["kind"] == kind]
        if chosen:
            lines += [f"## {title}", ""]
            for entry in chosen:
                lines += renderer(entry)
    # the headline: the newest final speed record, with the final quality record that shares most of its systems
    # (interim records and side studies never)
    headline = [entry for entry in entries if not entry.get("interim") and not entry.get("side_study")]
    speeds = sorted((entry for entry in headline if entry["kind"] == "speed"), key=lambda entry: entry["date"])
    qualities = [entry for entry in headline if entry["kind"] == "quality"]
    if speeds and qualities:
        speed = speeds[-1]
        quality = max(qualities, key=lambda entry: len(set(entry["data"]["systems"]) & set(speed["data"]["systems"])))
        if plot_frontier(speed, quality, FRONTIER_SPLIT):
            lines += ["## Quality against speed", "", f"Systems of `{speed['name']}` and `{quality['name']}` "
                      f"({FRONTIER_SPLIT}):", "", "![BLEU vs latency](records/frontier.png)", ""]
        write_readme_block(readme_summary(speed, quality, FRONTIER_SPLIT))
    RESULTS_MD.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    record_parser = commands.add_parser("record")
    record_parser.add_argument("run_dir", type=Path)
    record_parser.add_argument("--name", required=True)
    record_parser.add_argument("--command", dest="run_command", required=True)
    record_parser.add_argument("--commit")
    record_parser.add_argument("--note", help="what the numbers alone do not say (an interruption, contention)")
    bench_parser = commands.add_parser("record-bench")
    bench_parser.add_argument("bench_json", type=Path)
    bench_parser.add_argument("--name", required=True)
    bench_parser.add_argument("--command", dest="run_command", required=True)
    bench_parser.add_argument("--gap-to", action="append", metavar="LABEL",
                              help="quality only: add a column with each system's BLEU minus this system's")
    bench_parser.add_argument("--note", help="what the numbers alone do not say")
    bench_parser.add_argument("--interim", action="store_true",
                              help="a checkpoint of a run in progress: rendered, never the README headline")
    bench_parser.add_argument("--side-study", action="store_true",
                              help="one question (e.g. one option's cost) beside fewer systems than the main "
                                   "comparison: rendered, never the README headline")
    commands.add_parser("render")
    args = parser.parse_args()
    if args.command == "record":
        print(record(args.run_dir, args.name, args.run_command, args.commit, args.note))
    elif args.command == "record-bench":
        print(record_bench(args.bench_json, args.name, args.run_command, args.gap_to, args.note, args.interim,
                           args.side_study))
    render()


if __name__ == "__main__":
    main()
