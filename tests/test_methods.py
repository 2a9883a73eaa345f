"""The methods (cmlm, vanilla) behind the model: outputs pinned before the restructure (issue 12) stay
bit-identical."""

import json
from pathlib import Path

import pytest
import torch

from nat_hf import NATConfig, NATForConditionalGeneration
from nat_hf.methods import METHODS

from .conftest import TINY, objective_config_kwargs

PINNED = json.loads(Path(__file__).with_name("pinned_generate.json").read_text())
SOURCES = torch.tensor([[5, 6, 7, 8, 9, 10, 1], [11, 12, 13, 1, 0, 0, 0], [14, 15, 16, 17, 1, 0, 0],
                        [1, 0, 0, 0, 0, 0, 0]])
LABELS = torch.tensor([[20, 21, 22, 23, 1, -100], [24, 25, 1, -100, -100, -100], [26, 27, 28, 29, 30, 1],
                       [1, -100, -100, -100, -100, -100]])
CASES = {"cmlm": {}, "vanilla": {"objective": "vanilla"},
         "copy": {"objective": "vanilla", "decoder_input_mode": "copy"}}


def pinned_model(case: str) -> NATForConditionalGeneration:
    """A seeded tiny model with large random weights (varied tokens and lengths, unlike a fresh init)."""
    torch.manual_seed(0)
    model = NATForConditionalGeneration(NATConfig(**TINY, **CASES[case])).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, 1.0)
            else:
                parameter.add_(torch.randn_like(parameter) * 0.5)
        model.model.length_predictor.bias[TINY["max_length_offset"] : TINY["max_length_offset"] + 4] += 3.0
    return model


@pytest.fixture
def one_thread():
    """The pinned floats were computed with one CPU thread; other tests (test_demo) leave 2 set, and reductions
    split over threads differ in the last bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", sorted(CASES))
def test_generate_and_loss_match_the_outputs_pinned_before_the_restructure(case, one_thread):
    model = pinned_model(case)
    for index in range(4):
        pinned = PINNED[f"{case}/{index}"]
        output = model.generate(SOURCES, attention_mask=(SOURCES != 0).long(), return_dict_in_generate=True,
                                **pinned["options"])
        assert output.sequences.tolist() == pinned["sequences"], pinned["options"]
        assert output.lengths.tolist() == pinned["lengths"]
        # floats to 1e-5, not bitwise: the pinned ones came from one CPU (AMD EPYC), and another CPU's kernels
        # (e.g. an Intel Xeon's) round differently in the last bits; the tokens above are exact
        torch.testing.assert_close(output.sequences_scores, torch.tensor(pinned["scores"]), rtol=1e-5, atol=1e-5)
    model.train()
    torch.manual_seed(1)
    output = model(input_ids=SOURCES, attention_mask=(SOURCES != 0).long(), labels=LABELS)
    values = [output.loss.item(), output.token_loss.item(), output.length_loss.item(), output.logits.sum().item()]
    assert values == pytest.approx(PINNED[f"{case}/loss"], rel=1e-5, abs=1e-5)


def test_parameter_names_are_those_of_saved_models():
    """Checkpoints saved before the restructure load: same parameter names (the length head keeps
    `model.length_predictor`)."""
    model = NATForConditionalGeneration(NATConfig(**TINY))
    assert list(model.state_dict()) == PINNED["state_dict_keys"]


def test_the_method_is_the_models_marker_and_declares_the_generation_defaults(tiny_model):
    from nat_hf.methods import METHODS

    assert tiny_model.nat_method is METHODS["cmlm"] and tiny_model.model.nat_method is METHODS["cmlm"]
    defaults = METHODS["cmlm"].option_defaults()
    assert defaults == {"num_iterations": 10, "length_beam": 5, "decoding_strategy": "mask_predict"}
    assert {name: getattr(tiny_model.generation_config, name) for name in defaults} == defaults


def test_a_method_without_a_length_head_gets_none(monkeypatch):
    """The length predictor is the method's head, not the backbone's: a method declaring no heads builds none."""
    from nat_hf.method_base import NATMethod
    from nat_hf.methods import METHODS

    monkeypatch.setitem(METHODS, "cmlm", NATMethod())
    model = NATForConditionalGeneration(NATConfig(**TINY)).eval()
    assert not hasattr(model.model, "length_predictor")
    assert model(input_ids=SOURCES[:1]).length_logits is None


def test_forward_passes_the_training_step_to_the_method(tiny_model, monkeypatch):
    from nat_hf.method_cmlm import CMLMMethod

    seen = []
    real = CMLMMethod.token_loss

    def recording(self, model, context, target, target_mask, step=None):
        seen.append(step)
        return real(self, model, context, target, target_mask, step)

    monkeypatch.setattr(CMLMMethod, "token_loss", recording)
    tiny_model(input_ids=SOURCES, labels=LABELS, step=7)
    tiny_model(input_ids=SOURCES, labels=LABELS)
    assert seen == [7, None]


def test_an_option_of_another_method_raises_value_error_naming_it(tiny_config):
    from nat_hf.methods import METHODS

    options = {**METHODS["cmlm"].option_defaults(), "upsample_ratio": 2}
    with pytest.raises(ValueError, match=r"\['upsample_ratio'\] do not apply to method 'cmlm'"):
        METHODS["cmlm"].check_options(tiny_config, options)


def test_cli_decoding_flags_are_the_methods_options():
    """`nat-hf translate` reads its NAT flags from the methods (declared once), the generic ones beside them."""
    import argparse

    import nat_hf_cli
    from nat_hf.methods import METHODS

    parser = argparse.ArgumentParser()
    nat_hf_cli.add_decoding_options(parser, with_methods=True)
    args = parser.parse_args(["--num-iterations", "2", "--length-beam", "3", "--decoding-strategy", "mask_predict"])
    every_option = {name for method in METHODS.values() for name in method.option_defaults()}
    assert set(args.decoding_names) == {*every_option, "num_beams", "max_new_tokens"}
    assert nat_hf_cli.decoding_kwargs(args) == {"num_iterations": 2, "length_beam": 3,
                                                "decoding_strategy": "mask_predict"}


def test_the_config_check_runs_the_methods_option_validation(monkeypatch):
    """train.py's config check calls the method's `check_options` on the evaluation options (a ConfigError
    naming the eval key)."""
    from nat_hf.method_cmlm import MaskPredictOptions
    from nat_hf.train import ConfigError, build_config

    def refuse_three(self, config):
        if self.num_iterations == 3:
            raise ValueError("num_iterations=3 is refused by this method")

    monkeypatch.setattr(MaskPredictOptions, "validate", refuse_three)
    with pytest.raises(ConfigError, match="eval.final_decoding.num_iterations: num_iterations=3 is refused"):
        build_config({"eval": {"final_decoding": {"num_iterations": 3}}})
    with pytest.raises(ValueError, match="num_iterations=3 is refused"):
        pinned_model("cmlm").generate(SOURCES, num_iterations=3)


@pytest.mark.parametrize("objective", sorted(METHODS))
def test_a_method_predicting_target_positions_decodes_exactly_its_planned_lengths(objective):
    """`predicts_target_positions` (what a speculative drafter and an adversarial generator rely on): decoding at
    forced lengths returns exactly those lengths, and `one_pass_logits` gives one distribution per target position.
    The other methods are refused by both (tests/test_speculative.py, tests/test_adversarial.py)."""
    method = METHODS[objective]
    if not method.predicts_target_positions:
        pytest.skip(f"{objective} decodes over positions of its own")
    torch.manual_seed(0)
    model = NATForConditionalGeneration(NATConfig(**objective_config_kwargs(objective))).eval()
    attention_mask = SOURCES != 0
    forced = torch.tensor([3, 5, 1, 4])
    options = {**method.option_defaults(), "max_length": 30, "return_dict_in_generate": False}
    with torch.no_grad():
        hypotheses = method.decode(model, SOURCES, attention_mask, options, forced_lengths=forced)
        context = model.model.make_context(SOURCES, attention_mask, model.model.encode(SOURCES, attention_mask))
        target_mask = torch.arange(5)[None, :] < forced[:, None]
        logits = method.one_pass_logits(model, context, target_mask)
    assert torch.equal(hypotheses.lengths, forced)
    assert logits.shape == (4, 5, model.config.vocab_size)
