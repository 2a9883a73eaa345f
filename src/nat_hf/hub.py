"""Model cards and Hub uploads: `nat-hf card MODEL_DIR` and `nat-hf push MODEL_DIR REPO_ID [--dry-run]`.

The card is filled from measured results only: the training run's `results.json` (found next to the model
directory, as `train.py` leaves it) and optional `nat-hf bench speed` / `bench quality` JSON files.
"""

import argparse
import json
import math
import shutil
import tempfile
from pathlib import Path

import yaml

TEMPLATE = Path(__file__).with_name("model_card_template.md")  # also reachable as model_cards/nat_model_card.md
REQUIRED_FILES = ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                  "tokenizer_config.json", "modeling_nat.py", "configuration_nat.py", "README.md")


def load_json(path: Path | None) -> dict | None:
    return json.loads(Path(path).read_text()) if path else None


def describe_options(options: dict) -> str:
    return ", ".join(f"{name}={value}" for name, value in options.items()) or "defaults"


def quality_rows(results: dict | None, quality: dict | None, model_dir: Path) -> tuple[list[str], list]:
    """Markdown rows and model-index `EvalResult`s. Rows of a `bench quality` JSON that measured another model
    (e.g. the AR teacher) are kept as comparisons, named by their label and model."""
    from huggingface_hub import EvalResult

    rows = ["| system | split | BLEU | chrF | decoding |", "| --- | --- | --- | --- | --- |"]
    evals = []
    if results:
        decoding = f"num_iterations={results.get('num_iterations')}, length_beam={results.get('length_beam')}"
        splits = [key.removesuffix("_bleu") for key in results
                  if key.endswith("_bleu") and key != "best_valid_bleu" and not key.startswith("averaged_")]
        for split in splits:
            rows.append(f"| this model | {split} | {results[split + '_bleu']:.2f} | {results[split + '_chrf']:.2f} | "
                        f"{decoding} |")
            evals.append(EvalResult(task_type="translation", dataset_type="multi30k", dataset_name=f"Multi30k {split}",
                                    dataset_split=split, metric_type="bleu", metric_name="sacreBLEU",
                                    metric_value=round(results[split + "_bleu"], 2)))
    if quality:
        for label, entry in quality["systems"].items():
            this_model = Path(entry["model"]).resolve() == Path(model_dir).resolve()
            name = f"this model ({label})" if this_model else f"{label} (`{entry['model']}`)"
            for split, scores in entry["splits"].items():
                rows.append(f"| {name} | {split} | {scores['bleu']:.2f} | {scores['chrf']:.2f} | "
                            f"{describe_options(entry['options'])} |")
    return rows, evals


def speed_rows(speed: dict | None) -> list[str]:
    if not speed:
        return ["Not measured yet for this model (`nat-hf bench speed`)."]
    sizes, baselines = speed["batch_sizes"], speed.get("baselines", [])
    rows = ["| system | latency batch 1 (ms, median) | " + " | ".join(f"sent/s @ {s}" for s in sizes) + " | "
            + "".join(f"speed-up vs {baseline} (batch 1) | " for baseline in baselines),
            "| --- | --- | " + " | ".join("---" for _ in sizes) + " |" + " --- |" * len(baselines)]
    for label, entry in speed["systems"].items():
        throughput = entry["throughput_sentences_per_second"]
        rows.append(f"| {label} | {entry['latency_ms']['median']} | "
                    + " | ".join(str(throughput[str(s)]) for s in sizes) + " | "
                    + "".join(f"{entry['speedup'][baseline]['latency']}x | " for baseline in baselines))
    machine = speed["machine"]
    rows.append("")
    rows.append(f"Measured on {machine['cpu']} with {machine['torch_threads']} torch threads, torch "
                f"{machine['torch']}, commit {machine['commit']}, {machine['date']}.")
    return rows


def write_card(model_dir: Path, repo_id: str | None = None, results_path: Path | None = None,
               speed_path: Path | None = None, quality_path: Path | None = None, license: str = "apache-2.0",
               copy_to: Path | None = None):
    """Write `model_dir/README.md` (and the same card to `copy_to`, e.g. under `model_cards/`); return the
    `ModelCard`."""
    from huggingface_hub import ModelCard, ModelCardData

    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    generation = json.loads((model_dir / "generation_config.json").read_text())
    train_config = yaml.safe_load((model_dir / "train_config.yaml").read_text()) \
        if (model_dir / "train_config.yaml").is_file() else None
    if results_path is None and (model_dir.parent / "results.json").is_file():
        results_path = model_dir.parent / "results.json"
    results, speed, quality = load_json(results_path), load_json(speed_path), load_json(quality_path)
    data = (train_config or {}).get("data", {})
    source_lang, target_lang = data.get("source_lang", "en"), data.get("target_lang", "de")
    rows, evals = quality_rows(results, quality, model_dir)
    card_data = ModelCardData(
        language=[source_lang, target_lang], license=license, library_name="transformers",
        pipeline_tag="translation", tags=["translation", "non-autoregressive", "nat-hf", config["objective"]],
        datasets=["bentrevett/multi30k"], model_name=repo_id or model_dir.name, eval_results=evals or None,
    )
    from safetensors import safe_open

    with safe_open(model_dir / "model.safetensors", framework="pt") as weights:
        parameters = sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    training = "Not recorded."
    if results:
        init_from_ar = (train_config or {}).get("model", {}).get("init_from_ar")
        training = (f"{results['steps']} steps ({results['train_seconds'] / 60:.0f} minutes of training) on "
                    f"`{data.get('data_dir') or data.get('dataset_name')}`"
                    + (f", starting from the weights of the autoregressive model `{init_from_ar}`" if init_from_ar
                       else "")
                    + f"; best checkpoint at step {results['best_step']} by validation BLEU. Full config: "
                    "`train_config.yaml`.")
    sources = ", ".join(str(p) for p in (results_path, speed_path, quality_path) if p) or "none"
    card = ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), model_name=repo_id or model_dir.name, repo_id=repo_id or str(model_dir),
        source_lang=source_lang, target_lang=target_lang, objective=config["objective"],
        example="A man is riding a bike." if source_lang == "en" else "...",
        num_iterations=generation.get("num_iterations"), length_beam=generation.get("length_beam"),
        parameters=f"{parameters / 1e6:.1f}M", d_model=config["d_model"], encoder_layers=config["encoder_layers"],
        decoder_layers=config["decoder_layers"], heads=config["encoder_attention_heads"],
        ffn_dim=config["encoder_ffn_dim"], vocab_size=config["vocab_size"], training=training,
        quality_table="\n".join(rows), speed_table="\n".join(speed_rows(speed)), sources=sources,
    )
    card.save(model_dir / "README.md")
    if copy_to is not None:
        card.save(copy_to)
    return card


def stage_upload(model_dir: Path, staging: Path) -> list[str]:
    """Copy what an upload sends into `staging` (the model directory as saved, nothing else) and return the file
    list; raise if a file a Hub user needs is missing."""
    model_dir = Path(model_dir)
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{model_dir} lacks {missing}" + (" (run `nat-hf card` first)"
                                                                   if "README.md" in missing else ""))
    shutil.copytree(model_dir, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.staging"))
    return sorted(str(path.relative_to(staging)) for path in staging.rglob("*") if path.is_file())


def push(model_dir: Path, repo_id: str, dry_run: bool = False, private: bool = False) -> list[str]:
    """Upload a saved model directory (weights, config, generation config, tokenizer, card, remote code) to
    `repo_id` in one commit; with `dry_run`, only list what would be uploaded."""
    with tempfile.TemporaryDirectory() as staging:
        files = stage_upload(model_dir, Path(staging))
        if not dry_run:
            from huggingface_hub import HfApi

            api = HfApi()
            api.create_repo(repo_id, exist_ok=True, private=private)
            api.upload_folder(folder_path=staging, repo_id=repo_id, commit_message="Upload NAT model (nat-hf)")
    return files


def main_card(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nat-hf card", description="write MODEL_DIR/README.md from results")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--repo-id", help="the Hub name the card should use")
    parser.add_argument("--results", type=Path, help="training results.json (default: next to MODEL_DIR)")
    parser.add_argument("--speed", type=Path, help="nat-hf bench speed JSON")
    parser.add_argument("--quality", type=Path, help="nat-hf bench quality JSON")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--copy-to", type=Path, help="also write the card here (e.g. model_cards/NAME.md)")
    args = parser.parse_args(argv)
    write_card(args.model_dir, args.repo_id, args.results, args.speed, args.quality, args.license, args.copy_to)
    print(args.model_dir / "README.md")


def main_push(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nat-hf push", description="upload MODEL_DIR to the Hub")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("repo_id")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    files = push(args.model_dir, args.repo_id, args.dry_run, args.private)
    print(("would upload" if args.dry_run else "uploaded") + f" to {args.repo_id}:")
    for name in files:
        print(f"  {name}")
