"""The Accelerate training script on generated data: learning, checkpoints, resume, two processes, bad input."""

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from nat_hf.data import DataError
from nat_hf.train import ConfigError, build_config, check_init_from, decoding_options, load_config, train

from .conftest import kill_training_after_first_checkpoint

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
    resumed_from = kill_training_after_first_checkpoint(TINY_CONFIG, tiny_overrides(toy_corpus, killed, *extra),
                                                        killed)["step"]
    assert resumed_from < 40

    summary = train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, killed, *extra)), resume=True)
    assert summary["steps"] == 40
    loss = {run: next(r["loss"] for r in read_log(run) if r["event"] == "train" and r["step"] == 40)
            for run in (uninterrupted, killed)}
    assert abs(loss[uninterrupted] - loss[killed]) < 1e-4


def test_checkpoint_every_saves_between_evaluations_and_resumes_from_there(tmp_path, toy_corpus):
    """run.checkpoint_every=3 with evaluations every 200 steps: a run killed early resumes from step 3 (no
    evaluation before it), and the resumed run evaluates only at its end."""
    extra = ("optim.max_steps=200", "eval.eval_every=200", "run.checkpoint_every=3", "run.log_every=1",
             "data.test_splits=[]")
    output_dir = tmp_path / "run"
    state = kill_training_after_first_checkpoint(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir, *extra),
                                                 output_dir)
    assert state["step"] == 3
    assert not [record for record in read_log(output_dir) if record["event"] == "eval"]
    summary = train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir, *extra[1:], "optim.max_steps=8")),
                    resume=True)
    assert summary["steps"] == 8
    log = read_log(output_dir)
    assert [record["step"] for record in log if record["event"] == "resume"] == [3]
    assert [record["step"] for record in log if record["event"] == "eval"] == [8]


def test_two_processes_train_data_parallel(tmp_path, toy_corpus):
    output_dir = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "nat_hf.train", str(TINY_CONFIG),
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
        ({"eval": {"decoding": {"length_beam": 0}}}, "eval.decoding.length_beam: length_beam must be an integer"),
        ({"eval": {"decoding": [1]}}, "eval.decoding must be a mapping"),
        ({"run": {"checkpoint_every": 0}}, "run.checkpoint_every must be >= 1"),
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
                                                            "eval.decoding={}", "eval.final_decoding={num_beams: 2}")))
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
            "modeling_nat.py", "configuration_nat.py", "methods.py", "method_base.py", "method_cmlm.py",
            "method_vanilla.py", "pipeline_nat.py"} <= listed


# ------------------------------------------------------------------------------------------- hardening (issue 11)
def comparable_log(output_dir: Path) -> list[tuple]:
    """The log's events, steps and losses/scores (rounded), without the timings that differ between two runs."""
    records = []
    for record in read_log(output_dir):
        values = {key: round(value, 3) for key, value in record.items()
                  if key in ("loss", "valid_loss", "valid_bleu", "best_bleu")}
        records.append((record["event"], record.get("step"), tuple(sorted(values.items()))))
    return records


def test_a_second_run_into_a_directory_in_use_is_refused(tmp_path, toy_corpus, capsys):
    """Run B (fresh, then --resume) into the directory of a live run A stops with exit 2 before writing
    anything; A finishes with the same log, results and best model as the same run alone."""
    from safetensors.torch import load_file

    from nat_hf.train import main

    extra = ("optim.max_steps=60", "eval.eval_every=30", "data.test_splits=[test]", "run.threads=1")
    shared = tmp_path / "shared"
    run_a = subprocess.Popen(
        [sys.executable, "-m", "nat_hf.train", str(TINY_CONFIG), *tiny_overrides(toy_corpus, shared, *extra)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 240
    while not (shared / "train_config.yaml").is_file() and run_a.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # A writes its config once it holds the directory
    assert run_a.poll() is None, "run A ended before run B could start"
    a_config = (shared / "train_config.yaml").read_text()
    different = tiny_overrides(toy_corpus, shared, "optim.max_steps=7", "optim.seed=5")  # B writes other things
    for resume in ([], ["--resume"]):
        capsys.readouterr()
        with pytest.raises(SystemExit) as stopped:
            main([str(TINY_CONFIG), *different, *resume])
        assert stopped.value.code == 2
        assert "is in use by another training run" in capsys.readouterr().err
    assert run_a.poll() is None, "run A ended while B was being refused: the test proved nothing"
    assert (shared / "train_config.yaml").read_text() == a_config
    assert run_a.wait(timeout=240) == 0, run_a.stderr.read()[-3000:]

    alone = tmp_path / "alone"
    train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, alone, *extra)))
    assert comparable_log(shared) == comparable_log(alone)
    results = {run: json.loads((run / "results.json").read_text()) for run in (shared, alone)}
    for key in ("steps", "best_step", "val_bleu", "test_bleu", "best_valid_bleu"):
        assert results[shared][key] == results[alone][key], key
    best = {run: load_file(run / "best" / "model.safetensors") for run in (shared, alone)}
    assert best[shared].keys() == best[alone].keys()
    for name, tensor in best[alone].items():
        assert torch.allclose(best[shared][name], tensor, atol=1e-5), name
    assert yaml.safe_load((shared / "train_config.yaml").read_text())["optim"]["max_steps"] == 60


def test_the_run_lock_is_released_when_the_run_ends_or_fails(tmp_path, toy_corpus):
    import fcntl

    from nat_hf.train import RUN_LOCK, run_lock

    with run_lock(tmp_path / "run"):
        with pytest.raises(ConfigError, match="in use by another training run"), run_lock(tmp_path / "run"):
            pass
    with pytest.raises(RuntimeError), run_lock(tmp_path / "run"):
        raise RuntimeError("the run failed")
    with (tmp_path / "run" / RUN_LOCK).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again: would raise BlockingIOError if held


def test_resume_repairs_a_kill_between_checkpoint_and_best(tmp_path, toy_corpus):
    """A kill after the step-10 checkpoint but before best/ was (re)written: --resume rewrites best/ from the
    restored state, identical to what the run would have saved."""
    extra = ("optim.max_steps=10", "eval.eval_every=10", "data.test_splits=[]")
    output_dir = tmp_path / "run"
    train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir, *extra)))
    saved = (output_dir / "best" / "model.safetensors").read_bytes()
    assert json.loads((output_dir / "best" / "best_step.json").read_text())["step"] == 10
    shutil.rmtree(output_dir / "best")
    summary = train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir, *extra)), resume=True)
    assert (output_dir / "best" / "model.safetensors").read_bytes() == saved
    assert summary["best_step"] == 10 and summary["steps"] == 10


def test_resume_restarts_a_run_killed_before_its_first_checkpoint(tmp_path, toy_corpus):
    """Log, tokenizer and a best/ without the best-step marker but no checkpoint (what a kill before the first
    checkpoint left with the earlier save order): a fresh start is refused, --resume restarts from step 0 and keeps
    nothing of the killed run."""
    extra = ("optim.max_steps=10", "eval.eval_every=10", "data.test_splits=[]")
    reference, output_dir = tmp_path / "reference", tmp_path / "run"
    train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, reference, *extra)))
    shutil.copytree(reference, output_dir)
    shutil.rmtree(output_dir / "checkpoints")
    (output_dir / "results.json").unlink()
    (output_dir / "best" / "best_step.json").unlink()
    (output_dir / "snapshots").mkdir()
    (output_dir / "snapshots" / "step-00000005.safetensors").write_text("stale")
    with (output_dir / "log.jsonl").open("a") as log:
        log.write(json.dumps({"event": "train", "step": 99, "loss": 0.0}) + "\n")
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir, *extra)))
    summary = train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir, *extra)), resume=True)
    assert summary["steps"] == 10
    assert comparable_log(output_dir) == comparable_log(reference)
    assert not (output_dir / "snapshots").exists()
    assert (output_dir / "checkpoints" / "last" / "trainer_state.json").is_file()


def test_resume_refuses_to_restart_a_trained_run_whose_checkpoints_were_removed(tmp_path, toy_corpus):
    extra = ("optim.max_steps=10", "eval.eval_every=10", "data.test_splits=[]")
    output_dir = tmp_path / "run"
    train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir, *extra)))
    shutil.rmtree(output_dir / "checkpoints")  # to free disk space
    before = sorted(str(path.relative_to(output_dir)) for path in output_dir.rglob("*"))
    with pytest.raises(ConfigError, match="has no checkpoint to continue from .*holds a trained model"):
        train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir, *extra)), resume=True)
    assert sorted(str(path.relative_to(output_dir)) for path in output_dir.rglob("*")) == before


def test_resume_skips_a_torn_last_log_line(tmp_path, toy_corpus):
    extra = ("optim.max_steps=10", "eval.eval_every=10", "data.test_splits=[]")
    output_dir = tmp_path / "run"
    train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir, *extra)))
    with (output_dir / "log.jsonl").open("a") as log:
        log.write('{"event": "train", "st')  # a kill (or a full disk) in the middle of a write
    train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir, *extra[1:], "optim.max_steps=12")),
          resume=True)
    records = read_log(output_dir)
    resumed = [record for record in records if record["event"] == "resume"]
    assert resumed and resumed[0]["skipped_lines"] == 1 and records[-1]["event"] == "end"


def test_resume_truncates_the_log_to_the_checkpoint(tmp_path, toy_corpus):
    extra = ("optim.max_steps=10", "eval.eval_every=10", "run.log_every=5", "data.test_splits=[]")
    output_dir = tmp_path / "run"
    train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir, *extra)))
    with (output_dir / "log.jsonl").open("a") as log:  # what a run killed after step 10 had logged beyond it
        log.write(json.dumps({"event": "train", "step": 15, "loss": 0.0}) + "\n")
    train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir, *extra[1:], "optim.max_steps=20")),
          resume=True)
    steps = [(record["event"], record.get("step")) for record in read_log(output_dir)
             if record["event"] in ("train", "resume", "end")]
    assert steps == [("train", 1), ("train", 5), ("train", 10), ("resume", 10), ("train", 15), ("train", 20),
                     ("end", None)]


def test_resume_accepts_the_run_directory_moved_or_spelt_differently(tmp_path, finished_run, monkeypatch):
    """The output directory is not part of the config compared on --resume (nor are the test splits or the
    final decoding, which only concern the final evaluation); best/ then decodes like the new final evaluation."""
    corpus, output_dir, _ = finished_run
    moved = tmp_path / "moved"
    shutil.copytree(output_dir, moved)
    monkeypatch.chdir(tmp_path)
    for spelling, extra in (("moved/", ["data.test_splits=[test]"]),
                            ("./moved", ["data.test_splits=[]", "eval.final_decoding.num_iterations=3"])):
        summary = train(load_config(TINY_CONFIG, tiny_overrides(corpus, Path(spelling), *extra)), resume=True)
        assert summary["steps"] == 20
    assert summary["num_iterations"] == 3 and "test_bleu" not in summary
    generation = json.loads((moved / "best" / "generation_config.json").read_text())
    assert generation["num_iterations"] == 3
    best_config = yaml.safe_load((moved / "best" / "train_config.yaml").read_text())
    assert best_config["eval"]["final_decoding"] == {"num_iterations": 3, "length_beam": 2}
    assert best_config["data"]["test_splits"] == []
    assert [record["event"] for record in read_log(moved)].count("end") == 1
    with pytest.raises(ConfigError, match="different config.*eval.decoding"):
        train(load_config(TINY_CONFIG, tiny_overrides(corpus, moved, "eval.decoding.num_iterations=3")), resume=True)


def test_unreadable_config_files_and_overrides_are_config_errors(tmp_path):
    cases = {"broken.yaml": b"model: [\n", "latin1.yaml": "optim:\n  seed: 1 # \xe9\n".encode("latin-1"),
             "list.yaml": b"- model\n"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ConfigError, match=f"config file {tmp_path / name}"):
            load_config(tmp_path / name)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(TINY_CONFIG, ["optim.learning_rate=["])
    for value in ("1e400", ".inf", ".nan"):
        with pytest.raises(ConfigError, match="optim.learning_rate must be a finite number"):
            load_config(TINY_CONFIG, [f"optim.learning_rate={value}"])


def test_yaml_float_spellings_are_accepted(tmp_path):
    config_path = tmp_path / "c.yaml"
    config_path.write_text("optim:\n  learning_rate: 5e-4\n  betas: [0.9, 98E-2]\n")
    assert yaml.safe_load(config_path.read_text())["optim"]["learning_rate"] == "5e-4"  # YAML 1.1: a string
    config = load_config(config_path)
    assert config.optim.learning_rate == 5e-4 and config.optim.betas == [0.9, 0.98]
    assert load_config(TINY_CONFIG, ["optim.learning_rate=5e-4"]).optim.learning_rate == 5e-4
    with pytest.raises(ConfigError, match="optim.learning_rate must be float"):
        load_config(TINY_CONFIG, ["optim.learning_rate=fast"])
    with pytest.raises(ConfigError, match="optim.max_steps must be int"):
        load_config(TINY_CONFIG, ["optim.max_steps=1e5"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.batch_size=0", "eval.batch_size must be >= 1"),
        ("eval.max_sentences=0", "eval.max_sentences must be >= 1"),
        ("run.log_every=0", "run.log_every must be >= 1"),
        ("run.threads=0", "run.threads must be >= 1"),
        ("eval.decoding.num_iterations=0", "eval.decoding.num_iterations: num_iterations must be an integer >= 1"),
        ("eval.final_decoding.length_beam=0", "eval.final_decoding.length_beam: length_beam must be an integer"),
        ("eval.average_last=1", "eval.average_last"),
        ("optim.max_minutes=0", "optim.max_minutes must be > 0"),
        ("optim.max_grad_norm=0", "optim.max_grad_norm must be > 0"),
        ("optim.betas=[0.9,1.5]", r"optim.betas must lie in \[0, 1\)"),
        ("optim.scheduler=inverse_sqroot", "optim.scheduler must be one of"),
        ("data.vocab_size=3", "data.vocab_size"),
        ("model.objective=cmlmm", "model.objective: .*must be one of"),
        ("model.attention_heads=3", r"model.attention_heads: .*divide `d_model`"),
        ("model.encoder_layers=-1", "model.encoder_layers: .*must be >= 1"),
        ("model.ffn_dim=0", "model.ffn_dim: .*must be >= 1"),
        ("model.dropout=1.5", r"model.dropout: .*\[0, 1\)"),
        ("model.decoder_input_mode=copy", "model.decoder_input_mode: .*'mask' with objective 'cmlm'"),
        ("model.position_embedding_type=rotary", "model.position_embedding_type"),
        ("model.activation_function=gleu", "model.activation_function must be one of"),
        ("eval.decoding.length_beam=40",
         r"eval.decoding.length_beam: length_beam=40 exceeds the number of length classes \(17\)"),
    ],
)
def test_bad_counts_and_architectures_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY_CONFIG, [override])


def test_a_misspelt_test_split_stops_before_anything_is_written(tmp_path, toy_corpus):
    output_dir = tmp_path / "out"
    with pytest.raises(DataError, match="missing data file .*tset.en"):
        train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir, "data.test_splits=[tset]")))
    assert not output_dir.exists()
    with pytest.raises(ConfigError, match="no run under"):
        train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir)), resume=True)
    assert not output_dir.exists()


def test_copy_decoder_models_evaluate_in_one_pass(tmp_path, toy_corpus):
    """The method's defaults decide the evaluation decoding: glat decodes in one pass; vanilla's defaults are
    Mask-Predict's 10 iterations, which a copy decoder refuses, so a vanilla copy config states 1 itself."""
    glat = build_config({"model": {"objective": "glat", "decoder_input_mode": "copy"}})
    assert decoding_options(glat, False)["num_iterations"] == decoding_options(glat, True)["num_iterations"] == 1
    copy_model = {"objective": "vanilla", "decoder_input_mode": "copy"}
    with pytest.raises(ConfigError, match="eval.decoding.num_iterations: num_iterations > 1 needs decoder_input_mode"):
        build_config({"model": copy_model})
    with pytest.raises(ConfigError, match="eval.final_decoding.num_iterations: num_iterations > 1 needs"):
        build_config({"model": copy_model, "eval": {"decoding": {"num_iterations": 1}}})
    with pytest.raises(ConfigError, match="eval.decoding.num_iterations: "):
        load_config(TINY_CONFIG, ["model.objective=vanilla", "model.decoder_input_mode=copy"])  # the YAML sets 2
    summary = train(load_config(TINY_CONFIG, tiny_overrides(
        toy_corpus, tmp_path / "copy", "model.objective=vanilla", "model.decoder_input_mode=copy",
        "eval.decoding.num_iterations=1", "eval.final_decoding.num_iterations=1", "optim.max_steps=2",
        "eval.eval_every=2")))
    assert summary["steps"] == 2 and summary["num_iterations"] == 1 and "val_bleu" in summary


def test_init_from_is_checked_before_anything_is_written(tmp_path, toy_corpus):
    from nat_hf import NATConfig, NATForConditionalGeneration

    from .conftest import TINY

    copy_model = tmp_path / "copy_model"
    NATForConditionalGeneration(NATConfig(**{**TINY, "objective": "glat", "decoder_input_mode": "copy"})
                                ).save_pretrained(copy_model)
    output_dir = tmp_path / "out"
    # the saved model's method (glat, copy decoder) checks the YAML's decoding, not the config's model section
    with pytest.raises(ConfigError, match=r"eval.decoding.num_iterations: num_iterations > 1 needs decoder_input"):
        train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir, f"model.init_from={copy_model}")))
    config = build_config({"model": {"init_from": str(copy_model)}})  # decoding not set: glat's one pass
    check_init_from(config)
    assert decoding_options(config, True, objective="glat") == {"num_iterations": 1, "length_beam": 1,
                                                                "decoding_strategy": "mask_predict"}
    with pytest.raises(ConfigError, match="model.init_from: cannot read"):
        train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir, f"model.init_from={tmp_path}/none")))
    assert not output_dir.exists()


def test_a_missing_tokenizer_or_ar_model_stops_before_anything_is_written(tmp_path, toy_corpus):
    output_dir = tmp_path / "out"
    for key in ("data.tokenizer", "model.init_from_ar"):
        with pytest.raises(ConfigError, match=f"{key}: cannot load .*no such directory"):
            train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir, f"{key}={tmp_path}/missing")))
    assert not output_dir.exists()


def test_progress_shows_the_budget_that_binds():
    from nat_hf.train import progress_budget

    assert progress_budget(5, 2.0, 100, None) == (5, 100)  # no time budget: steps
    assert progress_budget(10, 30.0, 100_000, 1.0) == (30.0, 60.0)  # 100000 steps would take 83 hours: time
    assert progress_budget(10, 1.0, 20, 80.0) == (1.0, 2.0)  # 20 steps take 2 s of the 80 minutes: steps
    assert progress_budget(0, 0.0, 20, 80.0) == (0.0, 4800.0)


def test_time_budgeted_run_shows_its_time_budget_and_ends_with_a_summary_line(tmp_path, toy_corpus, capsys,
                                                                              caplog):
    output_dir = tmp_path / "timed"
    summary = train(load_config(TINY_CONFIG, tiny_overrides(
        toy_corpus, output_dir, "optim.max_steps=100000", "optim.max_minutes=0.01", "eval.eval_every=100000")))
    captured = capsys.readouterr()
    last_bar = [line for line in captured.err.replace("\r", "\n").splitlines() if line.startswith("training")][-1]
    assert "/100000" not in last_bar.split("step=")[0] and "train-s" in last_bar
    assert f"step={summary['steps']}/100000" in last_bar
    assert f"val BLEU {summary['val_bleu']:.2f} chrF {summary['val_chrf']:.2f} (best step {summary['steps']}" \
        in captured.out.splitlines()[-1]
    assert "Removed shared tensor" not in caplog.text


def test_checkpoints_leave_out_tied_copies_and_resume_ties_them_back(tmp_path, caplog):
    from accelerate import Accelerator
    from safetensors import safe_open

    from nat_hf import NATConfig, NATForConditionalGeneration
    from nat_hf.train import drop_tied_weights

    from .conftest import TINY

    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    accelerator.register_save_state_pre_hook(drop_tied_weights)
    model = accelerator.prepare(NATForConditionalGeneration(NATConfig(**TINY)))
    saved = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    accelerator.save_state(str(tmp_path / "state"))
    assert "Removed shared tensor" not in caplog.text
    with safe_open(tmp_path / "state" / "model.safetensors", "pt") as weights:
        assert "lm_head.weight" not in weights.keys() and "model.shared.weight" in weights.keys()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    accelerator.load_state(str(tmp_path / "state"))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert model.lm_head.weight.data_ptr() == model.model.shared.weight.data_ptr()


# --------------------------------------------------------------------------- method-agnostic training (issue 12)
@pytest.mark.parametrize(("old", "new"), [("num_iterations", "eval.decoding.num_iterations"),
                                          ("length_beam", "eval.decoding.length_beam"),
                                          ("num_beams", "eval.decoding.num_beams"),
                                          ("final_num_iterations", "eval.final_decoding.num_iterations"),
                                          ("final_length_beam", "eval.final_decoding.length_beam"),
                                          ("final_num_beams", "eval.final_decoding.num_beams")])
def test_old_eval_keys_name_what_replaced_them(old, new):
    with pytest.raises(ConfigError, match=f"eval.{old} was replaced by {new}"):
        build_config({"eval": {old: 2}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model": {"objective": "glat"}, "eval": {"decoding": {"nonsense": 1}}},
         r"eval.decoding.nonsense: decoding option\(s\) \['nonsense'\] do not apply to method 'glat'"),
        ({"eval": {"final_decoding": {"decoding_strategy": "beam"}}},
         "eval.final_decoding.decoding_strategy: decoding_strategy must be one of"),
        ({"model": {"family": "ar"}, "eval": {"decoding": {"length_beam": 2}}},
         r"eval.decoding.length_beam: not a decoding option of family ar \(its options: \['num_beams'\]\)"),
        ({"model": {"family": "ar"}, "eval": {"final_decoding": {"num_beams": 0}}},
         "eval.final_decoding.num_beams must be an integer >= 1"),
        ({"model": {"objective": "glat", "method_options": {"glancing_ratio": 0.5}}},
         r"model.method_options.glancing_ratio: .*\['glancing_ratio'\] are not options of method 'glat'"),
        ({"model": {"objective": "glat", "method_options": {"glancing_ratio_start": 1.5}}},
         r"model.method_options.glancing_ratio_start: .*must be a number in \[0, 1\]"),
        ({"model": {"objective": "glat", "method_options": {"glancing_anneal_steps": -1}}},
         "model.method_options.glancing_anneal_steps: .*must be an integer >= 0"),
        ({"model": {"method_options": [1]}}, "model.method_options must be a mapping"),
        ({"model": {"family": "ar", "method_options": {"glancing_ratio_start": 0.5}}},
         "model.method_options needs family nat"),
        ({"model": {"blank_token": "new"}}, r"model.blank_token must be one of \('tokenizer', 'append'\)"),
        ({"model": {"family": "ar", "blank_token": "append"}}, "model.blank_token: append needs family nat"),
    ],
)
def test_decoding_and_method_options_are_checked_by_the_method_at_config_time(values, message):
    with pytest.raises(ConfigError, match=message):
        build_config(values)


def test_defaults_and_overrides_of_the_decoding_mappings():
    ar = build_config({"model": {"family": "ar"}})
    assert decoding_options(ar, False) == {"num_beams": 1, "max_new_tokens": 257}
    assert decoding_options(ar, True) == {"num_beams": 4, "max_new_tokens": 257}
    # an AR model continued from a saved one keeps its position table: the cap follows it (a 256-position teacher
    # reaches 255 new tokens, not 257)
    from transformers import MarianConfig

    continued = build_config({"model": {"family": "ar", "init_from": "saved"}})
    short = MarianConfig(max_position_embeddings=256)
    assert decoding_options(continued, False, model_config=short) == {"num_beams": 1, "max_new_tokens": 255}
    assert decoding_options(ar, False, model_config=short)["max_new_tokens"] == 257  # a new model: the YAML's
    cmlm = build_config({})  # cmlm's own defaults
    assert decoding_options(cmlm, True) == {"num_iterations": 10, "length_beam": 5, "decoding_strategy": "mask_predict"}
    config = load_config(TINY_CONFIG, ["eval.final_decoding.length_beam=3", "eval.decoding={num_iterations: 1}"])
    assert config.eval.final_decoding == {"num_iterations": 4, "length_beam": 3}  # the YAML's, one entry changed
    assert config.eval.decoding == {"num_iterations": 1}
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(TINY_CONFIG, ["eval.decoding.num_iterations.x=1"])
    with pytest.raises(ConfigError, match="optim.learning_rate is not a mapping"):
        load_config(TINY_CONFIG, ["optim.learning_rate.x=1"])


def test_a_glat_run_saves_its_method_options_decodes_with_eval_decoding_and_logs_every_term(
        tmp_path, toy_corpus, monkeypatch):
    """A few steps of glat: `model.method_options` reach the saved config (defaults filled in), the periodic and
    final evaluations call generate with `eval.decoding` / `eval.final_decoding` (also the best model's generation
    defaults), and every train log line records the method's loss terms."""
    import nat_hf.train as train_module

    calls = []
    original = train_module.translate_texts

    def recording_translate(model, tokenizer, sources, batch_size, **kwargs):
        calls.append(kwargs)
        return original(model, tokenizer, sources, batch_size, **kwargs)

    monkeypatch.setattr(train_module, "translate_texts", recording_translate)
    output_dir = tmp_path / "glat"
    summary = train(load_config(TINY_CONFIG, tiny_overrides(
        toy_corpus, output_dir, "model.objective=glat", "model.decoder_input_mode=copy",
        "model.method_options={glancing_ratio_start: 0.4, glancing_anneal_steps: 7}", "optim.max_steps=4",
        "eval.eval_every=4", "run.log_every=2", "data.test_splits=[]",
        "eval.decoding={num_iterations: 1, length_beam: 2}", "eval.final_decoding={length_beam: 3}")))
    saved = json.loads((output_dir / "best" / "config.json").read_text())
    assert saved["objective"] == "glat"
    assert saved["method_options"] == {"glancing_ratio_start": 0.4, "glancing_ratio_end": 0.3,
                                       "glancing_anneal_steps": 7}
    periodic = {"num_iterations": 1, "length_beam": 2, "decoding_strategy": "mask_predict"}
    final = {"num_iterations": 1, "length_beam": 3, "decoding_strategy": "mask_predict"}
    assert [{key: call[key] for key in periodic} for call in calls] == [periodic, final]  # step 4, then the end
    generation = json.loads((output_dir / "best" / "generation_config.json").read_text())
    assert {key: generation[key] for key in final} == final
    assert {key: summary[key] for key in final} == final
    train_records = [record for record in read_log(output_dir) if record["event"] == "train"]
    assert [record["step"] for record in train_records] == [1, 2, 4]
    for record in train_records:
        assert set(record["loss_terms"]) == {"token", "length"} and record["counts"] == {}
        # glat's total is token + length_loss_weight (0.1) x length, step by step, so also over the window
        expected = record["loss_terms"]["token"] + 0.1 * record["loss_terms"]["length"]
        assert record["loss"] == pytest.approx(expected, rel=1e-5)


def test_the_log_sums_the_methods_counts_over_the_window(tmp_path, toy_corpus, monkeypatch):
    """`LossOutput.counts` (e.g. ctc/dag's `skipped_targets`), as the model's forward returns them in
    `loss_counts`, are summed over each log window and over micro-batches; `loss_terms`, when the forward gives
    them, are the logged terms."""
    from nat_hf import NATForConditionalGeneration

    original = NATForConditionalGeneration.forward

    def forward_with_counts(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        if output.loss is not None:
            step = kwargs.get("step")
            output.loss_terms = {"token": output.token_loss, "length": output.length_loss, "extra": output.loss * 0}
            output.loss_counts = {"skipped_targets": torch.tensor(1),
                                  "step_plus_one": torch.tensor(-1 if step is None else step + 1)}
        return output

    monkeypatch.setattr(NATForConditionalGeneration, "forward", forward_with_counts)
    output_dir = tmp_path / "counts"
    train(load_config(TINY_CONFIG, tiny_overrides(
        toy_corpus, output_dir, "optim.max_steps=6", "optim.gradient_accumulation_steps=2", "eval.eval_every=6",
        "run.log_every=3", "data.test_splits=[]")))
    train_records = [record for record in read_log(output_dir) if record["event"] == "train"]
    assert [record["step"] for record in train_records] == [1, 3, 6]
    # two micro-batches per step; the loop passes step = optimiser steps done before this one (0, 1, ...)
    assert [record["counts"] for record in train_records] == [
        {"skipped_targets": 2, "step_plus_one": 2 * 1},
        {"skipped_targets": 4, "step_plus_one": 2 * (2 + 3)},
        {"skipped_targets": 6, "step_plus_one": 2 * (4 + 5 + 6)},
    ]
    assert all(set(record["loss_terms"]) == {"token", "length", "extra"} for record in train_records)
    assert all(record["loss_terms"]["extra"] == 0 for record in train_records)


def test_a_ctc_run_from_an_ar_model_appends_the_blank_after_the_teachers_vocabulary(tmp_path, toy_corpus):
    """`model.blank_token: append` with a teacher vocabulary that has no blank: blank_token_id = teacher vocabulary
    size, one more row; `init_from_ar` copies the teacher's rows and leaves the blank's row as initialised. Without
    it, the ctc config is a ConfigError naming the key before anything is written."""
    from transformers import MarianConfig, MarianMTModel

    from nat_hf.tokenization import train_tokenizer

    tokenizer = train_tokenizer(files=[toy_corpus / "train.en", toy_corpus / "train.de"], vocab_size=120,
                                algorithm="bpe", with_blank=False)
    vocab = len(tokenizer)
    torch.manual_seed(0)
    marian = MarianMTModel(MarianConfig(vocab_size=vocab, d_model=32, encoder_layers=1, decoder_layers=1,
                                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                        decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=0,
                                        eos_token_id=1, decoder_start_token_id=0))
    ar_dir = tmp_path / "ar"
    marian.save_pretrained(ar_dir)
    tokenizer.save_pretrained(ar_dir)
    ctc = ("model.objective=ctc", "model.decoder_input_mode=copy", "model.max_target_positions=96",
           "model.method_options={upsample_ratio: 3, glancing_ratio_start: 0.5}", "eval.decoding={}",
           "eval.final_decoding={}", f"model.init_from_ar={ar_dir}", "data.test_splits=[]")
    refused = tmp_path / "refused"
    with pytest.raises(ConfigError, match="model.blank_token: .*blank_token_id.*append"):
        train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, refused, *ctc)))
    assert not refused.exists()

    output_dir = tmp_path / "ctc"
    summary = train(load_config(TINY_CONFIG, tiny_overrides(toy_corpus, output_dir, *ctc, "model.blank_token=append",
                                                            "optim.max_steps=2", "eval.eval_every=2",
                                                            "optim.learning_rate=1e-9", "run.log_every=1")))
    assert summary["steps"] == 2 and summary["decoding_strategy"] == "greedy" and "num_iterations" not in summary
    saved = json.loads((output_dir / "best" / "config.json").read_text())
    assert (saved["vocab_size"], saved["blank_token_id"]) == (vocab + 1, vocab)
    assert saved["method_options"]["upsample_ratio"] == 3
    report = json.loads((output_dir / "init_from_ar.json").read_text())
    assert report["new_rows"] == [vocab]
    nat = AutoModelForSeq2SeqLM.from_pretrained(output_dir / "best")
    teacher_rows, nat_rows = marian.model.shared.weight, nat.model.shared.weight
    # two updates at a learning rate of 1e-9 leave the copied rows equal to the teacher's to 1e-6
    assert torch.allclose(nat_rows[:vocab], teacher_rows, atol=1e-6)
    assert not torch.allclose(nat_rows[vocab], torch.zeros_like(nat_rows[vocab]))
    train_records = [record for record in read_log(output_dir) if record["event"] == "train"]
    assert [record["step"] for record in train_records] == [1, 2]
    assert all(record["loss_terms"] for record in train_records)


def test_resume_reads_a_config_saved_by_an_earlier_version(tmp_path, finished_run):
    """A run saved with the old evaluation keys (and without the newer model keys) resumes under the new ones when
    they describe the same decoding; a different periodic decoding is still refused."""
    corpus, output_dir, _ = finished_run
    old_run = tmp_path / "old"
    shutil.copytree(output_dir, old_run)
    saved = yaml.safe_load((old_run / "train_config.yaml").read_text())
    for key in ("method_options", "blank_token"):
        del saved["model"][key]
    saved["eval"] = {"eval_every": 10, "num_iterations": 2, "length_beam": 2, "max_sentences": None,
                     "final_num_iterations": 4, "final_length_beam": 2, "batch_size": 64, "average_last": 0,
                     "num_beams": 1, "final_num_beams": 4}
    (old_run / "train_config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    with pytest.raises(ConfigError, match=r"different config: \[\"eval.decoding: \{'num_iterations': 2, "
                                          r"'length_beam': 2\} -> \{'num_iterations': 3, 'length_beam': 2\}\"\]"):
        train(load_config(TINY_CONFIG, tiny_overrides(corpus, old_run, "data.test_splits=[test]",
                                                      "eval.decoding.num_iterations=3")), resume=True)
    summary = train(load_config(TINY_CONFIG, tiny_overrides(corpus, old_run, "data.test_splits=[]")), resume=True)
    assert summary["steps"] == 20 and summary["num_iterations"] == 4
