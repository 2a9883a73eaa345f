"""Adversarial training: the straight-through sample, the losses, the gradient path to the generator, the config
checks, and `nat-hf train` with two models and two optimisers (resume after a kill, two processes, saved models)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForSeq2SeqLM

from nat_hf import NATConfig, NATForConditionalGeneration
from nat_hf.adversarial import (
    DISCRIMINATOR_DIR,
    AdversarialArgs,
    build_discriminator,
    check_generator,
    discriminator_loss,
    discriminator_term,
    generator_adversarial_loss,
    generator_sample,
    generator_term,
    gumbel_straight_through,
)
from nat_hf.modeling_discriminator import NATDiscriminator
from nat_hf.train import ConfigError, load_config, train

from .conftest import kill_training_after_first_checkpoint, objective_config_kwargs

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "training" / "configs" / "tiny_test.yaml"
TINY_DISCRIMINATOR = "adversarial.discriminator={d_model: 32, layers: 1, attention_heads: 2, ffn_dim: 64}"


# ----------------------------------------------------------------------------------------- the sample
def test_straight_through_sample_is_one_hot_forward_and_the_relaxation_backward():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7, requires_grad=True)
    weights = torch.randn(2, 3, 7)
    torch.manual_seed(1)
    one_hot, tokens = gumbel_straight_through(logits, 0.5)
    assert torch.equal(one_hot, F.one_hot(tokens, 7).float())
    (one_hot * weights).sum().backward()
    # the same noise, the relaxation by hand
    torch.manual_seed(1)
    gumbel = -torch.empty(2, 3, 7).exponential_().log()
    relaxed_logits = logits.detach().clone().requires_grad_(True)
    ((relaxed_logits + gumbel) / 0.5).softmax(-1).mul(weights).sum().backward()
    torch.testing.assert_close(logits.grad, relaxed_logits.grad)
    assert logits.grad.abs().sum() > 0


def test_samples_follow_the_distribution_whatever_the_temperature_and_skip_excluded_ids():
    logits = torch.tensor([2.0, 1.0, 0.0, 3.0]).log_softmax(-1).expand(20000, 1, 4)
    torch.manual_seed(0)
    _, cold = gumbel_straight_through(logits, 0.1, excluded_ids=[3])
    torch.manual_seed(0)
    _, hot = gumbel_straight_through(logits, 10.0, excluded_ids=[3])
    assert torch.equal(cold, hot)  # the temperature shapes the gradient only
    assert not (cold == 3).any()
    frequencies = torch.bincount(cold.flatten(), minlength=4).float() / cold.numel()
    expected = torch.tensor([2.0, 1.0, 0.0]).softmax(-1)
    torch.testing.assert_close(frequencies[:3], expected, atol=0.015, rtol=0)


def test_losses_equal_their_definitions():
    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([-3.0, 0.2, 1.0])
    loss, accuracy = discriminator_loss(real, fake, label_smoothing=0.1)
    by_hand = (-(0.9 * F.logsigmoid(real) + 0.1 * F.logsigmoid(-real)).mean()
               - F.logsigmoid(-fake).mean()) / 2
    torch.testing.assert_close(loss, by_hand)
    assert float(accuracy) == pytest.approx((2 / 3 + 1 / 3) / 2)
    torch.testing.assert_close(generator_adversarial_loss(fake), -F.logsigmoid(fake).mean())


# ---------------------------------------------------------------------------------- the gradient path
def adversarial_batch():
    input_ids = torch.tensor([[5, 6, 7, 8, 1], [9, 10, 11, 1, 0]])
    labels = torch.tensor([[12, 13, 14, 1], [15, 16, 1, -100]])
    return input_ids, (input_ids != 0).long(), labels


@pytest.mark.parametrize("objective", ["cmlm", "glat"])
def test_the_adversarial_gradient_reaches_the_generator_and_only_it(objective):
    torch.manual_seed(0)
    config = NATConfig(**objective_config_kwargs(objective),
                       **({"decoder_input_mode": "copy"} if objective == "glat" else {}))
    generator = NATForConditionalGeneration(config).train()
    discriminator = build_discriminator(AdversarialArgs(discriminator={"d_model": 16, "layers": 1,
                                                                       "attention_heads": 2, "ffn_dim": 32}),
                                        generator)
    sample = generator_sample(generator, *adversarial_batch())
    assert sample.logits.shape == (2, 3, config.vocab_size)
    assert sample.target_mask.tolist() == [[True, True, True], [True, True, False]]
    loss = generator_term(sample, discriminator, temperature=1.0, excluded_ids=[0, 1, 3])
    loss.backward()
    for name in ("lm_head.weight", "model.decoder.layers.0.ffn.fc1.weight", "model.encoder.layers.0.ffn.fc1.weight"):
        grad = generator.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert all(parameter.grad is None and parameter.requires_grad for parameter in discriminator.parameters())
    # the discriminator's own term trains it, not the generator
    generator.zero_grad()
    sample.logits = sample.logits.detach()
    loss, accuracy = discriminator_term(sample, discriminator, label_smoothing=0.1, excluded_ids=[0, 1, 3])
    loss.backward()
    assert all(parameter.grad is None for parameter in generator.parameters())
    assert discriminator.score.weight.grad.abs().sum() > 0
    assert float(accuracy) in (0.0, 0.25, 0.5, 0.75, 1.0)  # two real and two generated targets, halves weighted


@pytest.mark.parametrize("objective", ["ctc", "dag"])
def test_decoders_over_upsampled_positions_are_refused_by_name(objective):
    generator = NATForConditionalGeneration(NATConfig(**objective_config_kwargs(objective)))
    with pytest.raises(ValueError, match=f"needs a decoder that predicts target positions.*'{objective}'"):
        check_generator(generator)


def test_the_temperature_decays_linearly_then_stays():
    args = AdversarialArgs(temperature_start=2.0, temperature_end=0.5, temperature_anneal_steps=100)
    assert [args.temperature(step) for step in (0, 50, 100, 400)] == [2.0, 1.25, 0.5, 0.5]
    assert AdversarialArgs(temperature_start=0.7).temperature(1000) == 0.7


# -------------------------------------------------------------------------------------- nat-hf train
def tiny_overrides(corpus: Path, output_dir: Path, *extra: str) -> list[str]:
    return [f"data.data_dir={corpus}", f"run.output_dir={output_dir}", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained CMLM model on the toy corpus: the starting checkpoint of the adversarial runs."""
    from .conftest import write_toy_corpus

    root = tmp_path_factory.mktemp("adversarial")
    corpus = write_toy_corpus(root / "corpus")
    train(load_config(TINY_CONFIG, tiny_overrides(corpus, root / "base", "data.test_splits=[]")))
    return corpus, root / "base" / "best"


def adversarial_overrides(corpus: Path, start: Path, output_dir: Path, *extra: str) -> list[str]:
    return tiny_overrides(corpus, output_dir, f"model.init_from={start}", "adversarial.enabled=true",
                          TINY_DISCRIMINATOR, "adversarial.discriminator_warmup_steps=2", "data.test_splits=[]",
                          *extra)


@pytest.mark.parametrize(("override", "message"), [
    ("adversarial.weight=-0.5", "adversarial.weight must be >= 0"),
    ("adversarial.temperature_start=0", "adversarial.temperature_start must be > 0"),
    ("adversarial.temperature_end=-1", "adversarial.temperature_end must be > 0"),
    ("adversarial.discriminator_steps=0", "adversarial.discriminator_steps must be >= 1"),
    ("adversarial.label_smoothing=1", r"adversarial.label_smoothing must be in \[0, 1\)"),
    ("adversarial.discriminator={heads: 2}", "adversarial.discriminator.heads is not a discriminator setting"),
    ("adversarial.discriminator={d_model: 30, attention_heads: 4}", "adversarial.discriminator: .*attention_heads"),
    ("adversarial.discriminator={vocab_size: 9}", "adversarial.discriminator.vocab_size comes from the generator"),
    ("model.init_from=null", "adversarial training starts from a trained NAT model; set model.init_from"),
    ("optim.gradient_accumulation_steps=2", "needs optim.gradient_accumulation_steps 1"),
])
def test_bad_adversarial_settings_are_rejected_before_any_step(trained, tmp_path, override, message):
    corpus, start = trained
    output_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        train(load_config(TINY_CONFIG, adversarial_overrides(corpus, start, output_dir, override)))
    assert not output_dir.exists()


def test_a_generator_over_upsampled_positions_is_rejected_before_any_step(trained, tmp_path):
    corpus, _ = trained
    ctc = tmp_path / "ctc"
    NATConfig(**objective_config_kwargs("ctc")).save_pretrained(ctc)
    with pytest.raises(ConfigError, match="objective 'ctc'.*must be a NAT model whose decoder predicts target"):
        train(load_config(TINY_CONFIG, adversarial_overrides(corpus, ctc, tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def train_records(output_dir: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
    return {record["step"]: record for record in records if record["event"] == "train"}


def test_a_killed_adversarial_run_resumes_both_models_and_optimisers(trained, tmp_path):
    """Kill -9 after the first checkpoint, resume, and compare step 30 with an uninterrupted run: the generator's
    loss terms and the discriminator's loss and accuracy equal only if both models, both optimisers and the RNG were
    restored."""
    corpus, start = trained
    extra = ("optim.max_steps=30", "eval.eval_every=10", "run.log_every=1")
    uninterrupted = tmp_path / "uninterrupted"
    summary = train(load_config(TINY_CONFIG, adversarial_overrides(corpus, start, uninterrupted, *extra)))
    assert summary["steps"] == 30

    killed = tmp_path / "killed"
    kill_training_after_first_checkpoint(TINY_CONFIG, adversarial_overrides(corpus, start, killed, *extra), killed)
    checkpoint = sorted(path.name for path in (killed / "checkpoints" / "last").iterdir())
    assert {"model.safetensors", "model_1.safetensors", "optimizer.bin", "optimizer_1.bin"} <= set(checkpoint)

    train(load_config(TINY_CONFIG, adversarial_overrides(corpus, start, killed, *extra)), resume=True)
    first, second = train_records(uninterrupted)[30], train_records(killed)[30]
    assert set(first["loss_terms"]) == {"token", "length", "adversarial", "discriminator"}
    assert set(first["metrics"]) == {"discriminator_accuracy", "temperature"}
    for name in ("token", "length", "adversarial", "discriminator"):
        assert abs(first["loss_terms"][name] - second["loss_terms"][name]) < 1e-4, name
    assert first["metrics"] == pytest.approx(second["metrics"], abs=1e-6)

    # the best generator and its discriminator, saved side by side, load back
    generator = AutoModelForSeq2SeqLM.from_pretrained(uninterrupted / "best")
    discriminator = AutoModel.from_pretrained(uninterrupted / DISCRIMINATOR_DIR)
    assert isinstance(discriminator, NATDiscriminator)
    assert discriminator.config.vocab_size == generator.config.vocab_size
    best_step = json.loads((uninterrupted / "best" / "best_step.json").read_text())["step"]
    log = [json.loads(line) for line in (uninterrupted / "log.jsonl").read_text().splitlines()]
    assert next(r for r in log if r["event"] == "start")["discriminator_parameters"] == discriminator.num_parameters()
    assert best_step in (10, 20, 30)


def test_warm_up_trains_the_discriminator_alone(trained, tmp_path):
    corpus, start = trained
    output_dir = tmp_path / "run"
    train(load_config(TINY_CONFIG, adversarial_overrides(corpus, start, output_dir, "optim.max_steps=4",
                                                         "eval.eval_every=4", "run.log_every=1",
                                                         "adversarial.discriminator_warmup_steps=3")))
    records = train_records(output_dir)
    assert [("adversarial" in records[step]["loss_terms"]) for step in (1, 2, 3, 4)] == [False, False, False, True]
    assert all("discriminator" in records[step]["loss_terms"] for step in (1, 2, 3, 4))


def test_two_processes_train_both_models_data_parallel(trained, tmp_path):
    corpus, start = trained
    output_dir = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "nat_hf.train", str(TINY_CONFIG),
         *adversarial_overrides(corpus, start, output_dir, "optim.max_steps=4", "eval.eval_every=4",
                                "run.threads=1", "run.log_every=1")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((output_dir / "results.json").read_text())["world_size"] == 2
    assert "adversarial" in train_records(output_dir)[4]["loss_terms"]
    assert (output_dir / DISCRIMINATOR_DIR / "model.safetensors").is_file()

