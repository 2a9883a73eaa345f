"""The Accelerate training script on generated data: learning, checkpoints, resume, two processes, bad input."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from nat_hf.data import DataError
from nat_hf.train import ConfigError, build_config, load_config, train

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "training" / "configs" / "tiny_test.yaml"


def tiny_overrides(corpus: Path, output_dir: Path, *extra: str) -> list[str]:
    return [f"data.data_dir={corpus}", f"run.output_dir={output_dir}", *extra]


def read_log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]


def snapshot(directory: Path) -> dict[str, str]:
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from .conftest import write_toy_corpus

    root = tmp_path_factory.mktemp("run")
    corpus = write_toy_corpus(root / "corpus")
    output_dir = root / "out"
    summary = train(load_config(TINY_CONFIG, tiny_overrides(corpus, output_dir, "data.test_splits=[test]")))
    return corpus, output_dir, summary


def test_every_shipped_training_config_loads():
    configs = sorted((REPO / "training" / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        config = load_config(path)
        assert config.optim.max_steps >= 1, path


def test_training_lowers_validation_loss_and_saves_a_loadable_checkpoint(finished_run):
    corpus, output_dir, summary = finished_run
    log = read_log(output_dir)
    start = next(record for record in log if record["event"] == "start")
    evals = [record for record in log if record["event"] == "eval"]
    assert [record["step"] for record in evals] == [10, 20]
    assert evals[-1]["valid_loss"] < start["valid_loss"]
    assert summary["steps"] == 20 and "test_bleu" in summary and "val_bleu" in summary
    best = output_dir / "best"
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "train_config.yaml", "modeling_nat.py", "pipeline_nat.py"):
        assert (best / name).is_file(), name
    model = AutoModelForSeq2SeqLM.from_pretrained(best, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(best)
    assert (model.generation_config.num_iterations, model.generation_config.length_beam) == (4, 2)
    output = model.generate(**tokenizer(["three one two"], return_tensors="pt"))
    assert output.shape[0] == 1
    assert not list(output_dir.rglob("*.staging")) and not list(output_dir.rglob("*.previous"))
    assert (output_dir / "test.hyp.de").read_text().count("\n") == 40


def test_killed_run_resumes_to_the_same_loss(tmp_path, toy_corpus):
    """Kill -9 a run after its first checkpoint, resume it, and compare its step-40 loss with an uninterrupted
    run of the same seed."""
    extra = ("optim.max_steps=40", "eval.eval_every=10", "run.log_every=1", "data.test_splits=[]")
    uninterrupted = tmp_path / "uninterrupted"
    train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, uninterrupted, *extra)))

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "nat_hf.train", str(TINY_CONFIG), *tiny_overrides(toy_corpus, killed, *extra)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    state = killed / "checkpoints" / "last" / "trainer_state.json"
    deadline = time.time() + 240
    while not state.is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert state.is_file(), "the run never wrote its first checkpoint"
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"
    resumed_from = json.loads(state.read_text())["step"]
    assert resumed_from < 40

    summary = train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, killed, *extra)), resume=True)
    assert summary["steps"] == 40
    loss = {run: next(r["loss"] for r in read_log(run) if r["event"] == "train" and r["step"] == 40)
            for run in (uninterrupted, killed)}
    assert abs(loss[uninterrupted] - loss[killed]) < 1e-4


def test_two_processes_train_data_parallel(tmp_path, toy_corpus):
    output_dir = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "-m", "nat_hf.train", str(TINY_CONFIG),
         *tiny_overrides(toy_corpus, output_dir, "optim.max_steps=4", "eval.eval_every=4", "run.threads=1")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = read_log(output_dir)
    assert next(r for r in log if r["event"] == "start")["world_size"] == 2
    assert [r["step"] for r in log if r["event"] == "eval"] == [4]  # one evaluation, written by rank 0 only
    assert json.loads((output_dir / "results.json").read_text())["world_size"] == 2
    assert (output_dir / "best" / "model.safetensors").is_file()
    assert (output_dir / "checkpoints" / "last" / "trainer_state.json").is_file()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"optim": {"lr": 1e-3}}, r"unknown key\(s\) \['lr'\]"),
        ({"optimizer": {}}, "unknown config section 'optimizer'"),
        ({"optim": {"max_steps": "many"}}, "optim.max_steps must be int"),
        ({"optim": {"betas": 0.9}}, "optim.betas must be a list"),
        ({"eval": {"length_beam": 0}}, "eval.length_beam"),
    ],
)
def test_bad_config_values_are_rejected(values, message):
    with pytest.raises(ConfigError, match=message):
        build_config(values)


def test_bad_overrides_are_rejected():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(TINY_CONFIG, ["max_steps=3"])


def bad_corpus(tmp_path, toy_corpus, problem: str) -> Path:
    corpus = tmp_path / problem
    shutil.copytree(toy_corpus, corpus)
    lines = (corpus / "train.de").read_text().splitlines()
    if problem == "misaligned":
        (corpus / "train.de").write_text("\n".join(lines[:-3]) + "\n")
    elif problem == "empty_line":
        lines[7] = ""
        (corpus / "train.de").write_text("\n".join(lines) + "\n")
    elif problem == "missing":
        (corpus / "val.en").unlink()
    return corpus


@pytest.mark.parametrize(("problem", "message"), [("misaligned", "not aligned"), ("empty_line", "line 8"),
                                                  ("missing", "missing data file")])
def test_bad_data_stops_before_training(tmp_path, toy_corpus, problem, message):
    corpus = bad_corpus(tmp_path, toy_corpus, problem)
    with pytest.raises(DataError, match=message):
        train(load_config(TINY_CONFIG, tiny_overrides(corpus, tmp_path / "out")))
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_nothing_saved_is_overwritten_by_a_bad_start(tmp_path, finished_run):
    corpus, output_dir, _ = finished_run
    before = snapshot(output_dir)
    # the same directory again without --resume
    with pytest.raises(ConfigError, match="already holds a run"):
        train(load_config(TINY_CONFIG, tiny_overrides(corpus, output_dir, "data.test_splits=[test]")))
    # --resume with a different model
    with pytest.raises(ConfigError, match="different config.*model.d_model"):
        train(load_config(TINY_CONFIG, tiny_overrides(corpus, output_dir, "model.d_model=64")), resume=True)
    # a tokenizer whose vocabulary does not match the model to continue from
    other = tmp_path / "other_tokenizer"
    from nat_hf.tokenization import train_tokenizer

    train_tokenizer(texts=["completely different text"] * 20, vocab_size=40, algorithm="bpe").save_pretrained(other)
    with pytest.raises(ConfigError, match="does not match the tokenizer"):
        train(load_config(TINY_CONFIG, tiny_overrides(corpus, tmp_path / "finetune", f"data.tokenizer={other}",
                                                       f"model.init_from={output_dir / 'best'}")))
    assert snapshot(output_dir) == before


def test_train_command_line_reports_config_errors(tmp_path):
    result = subprocess.run([sys.executable, "-m", "nat_hf.train", str(TINY_CONFIG), "optim.nonsense=1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown key(s) ['nonsense']" in result.stderr
    assert yaml.safe_load(TINY_CONFIG.read_text())["optim"]["max_steps"] == 20


def test_checkpoint_averaging(tmp_path, toy_corpus):
    from safetensors.torch import load_file

    from nat_hf.train import average_checkpoints

    output_dir = tmp_path / "avg"
    summary = train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir, "optim.max_steps=30",
                                                            "eval.average_last=2")))
    snapshots = sorted((output_dir / "snapshots").glob("*.safetensors"))
    assert [path.name for path in snapshots] == ["step-00000020.safetensors", "step-00000030.safetensors"]
    assert summary["averaged_steps"] == [20, 30] and "averaged_val_bleu" in summary
    first, second = (load_file(path) for path in snapshots)
    averaged = AutoModelForSeq2SeqLM.from_pretrained(output_dir / "averaged").state_dict()
    for name, tensor in average_checkpoints(snapshots).items():
        assert torch.allclose(tensor, (first[name] + second[name]) / 2, atol=1e-6)
        assert torch.allclose(averaged[name], tensor)
    assert averaged["lm_head.weight"].data_ptr() == averaged["model.shared.weight"].data_ptr()


def test_training_can_start_from_an_ar_model(tmp_path, toy_corpus):
    from transformers import MarianConfig, MarianMTModel

    from nat_hf.tokenization import train_tokenizer

    tokenizer = train_tokenizer(files=[toy_corpus / "train.en", toy_corpus / "train.de"], vocab_size=120,
                                algorithm="bpe")
    marian = MarianMTModel(MarianConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                        decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=0,
                                        eos_token_id=1, decoder_start_token_id=0))
    ar_dir = tmp_path / "ar"
    marian.save_pretrained(ar_dir)
    tokenizer.save_pretrained(ar_dir)
    output_dir = tmp_path / "from_ar"
    summary = train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir, "optim.max_steps=2",
                                                            "eval.eval_every=2", f"model.init_from_ar={ar_dir}")))
    assert summary["steps"] == 2
    report = json.loads((output_dir / "init_from_ar.json").read_text())
    assert "model.encoder.layers.0.self_attn.q_proj.weight" in report["copied"]
    assert report["newly_initialised"] == ["model.length_predictor.weight", "model.length_predictor.bias"]


def test_the_same_script_trains_an_ar_baseline(tmp_path, toy_corpus):
    output_dir = tmp_path / "ar"
    summary = train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir, "model.family=ar",
                                                            "eval.final_num_beams=2")))
    log = read_log(output_dir)
    start = next(record for record in log if record["event"] == "start")
    last_eval = [record for record in log if record["event"] == "eval"][-1]
    assert last_eval["valid_loss"] < start["valid_loss"]
    assert summary["family"] == "ar" and summary["num_beams"] == 2 and "val_bleu" in summary
    model = AutoModelForSeq2SeqLM.from_pretrained(output_dir / "best")
    assert type(model).__name__ == "MarianMTModel"
    assert model.config.d_model == 32 and model.generation_config.num_beams == 2


def test_model_card_from_measured_results_and_push_dry_run(finished_run, capsys):
    from huggingface_hub import ModelCard

    from nat_hf_cli import main as cli

    _, output_dir, summary = finished_run
    best = output_dir / "best"
    cli(["card", str(best), "--repo-id", "nat-hf/tiny-toy", "--copy-to", str(output_dir / "card.md")])
    card = ModelCard.load(best / "README.md")
    assert (output_dir / "card.md").read_text() == (best / "README.md").read_text()
    metadata = card.data.to_dict()
    assert metadata["language"] == ["en", "de"] and "non-autoregressive" in metadata["tags"]
    results = {entry["dataset"]["split"]: entry["metrics"][0]["value"]
               for entry in metadata["model-index"][0]["results"]}
    assert results == {"val": round(summary["val_bleu"], 2), "test": round(summary["test_bleu"], 2)}
    assert f"{summary['test_bleu']:.2f}" in card.text
    capsys.readouterr()
    cli(["push", str(best), "nat-hf/tiny-toy", "--dry-run"])
    listed = {line.strip() for line in capsys.readouterr().out.splitlines()[1:]}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md",
            "modeling_nat.py", "configuration_nat.py", "decoding.py", "objectives.py", "pipeline_nat.py"} <= listed
