"""generate() hardening: the output cap, non-finite models, the bounded logits buffer, option validation."""

import re

import pytest
import torch

from nat_hf import method_base
from nat_hf.method_base import NonFiniteScoresError, predict_tokens

from .conftest import TINY


def favour_long_targets(model) -> None:
    """Make the length predictor prefer target lengths of source length + 0..3 (a random tiny model predicts
    mostly length 1, which would leave the caps and the chunking untested)."""
    with torch.no_grad():
        model.model.length_predictor.bias[TINY["max_length_offset"] : TINY["max_length_offset"] + 4] += 20.0


def count_encoder_calls(model) -> list[int]:
    calls = [0]
    model.model.encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# ------------------------------------------------------------------------------------------------ output cap
@pytest.mark.parametrize("cap_name", ["max_new_tokens", "max_length"])
@pytest.mark.parametrize("cap", [1, 2, 3])
@pytest.mark.parametrize(("num_iterations", "length_beam"), [(1, 1), (4, 3)])
def test_output_never_exceeds_the_cap(tiny_model, source_batch, cap_name, cap, num_iterations, length_beam):
    """The cap bounds the returned sequence, end-of-sentence included; a cap of 1 leaves end-of-sentence alone."""
    input_ids, attention_mask = source_batch
    favour_long_targets(tiny_model)
    uncapped = tiny_model.generate(input_ids, attention_mask=attention_mask, return_dict_in_generate=True,
                                   num_iterations=num_iterations, length_beam=length_beam)
    assert (uncapped.lengths >= 3).all()
    output = tiny_model.generate(input_ids, attention_mask=attention_mask, return_dict_in_generate=True,
                                 num_iterations=num_iterations, length_beam=length_beam, **{cap_name: cap})
    assert output.sequences.shape[1] <= cap
    assert output.lengths.tolist() == uncapped.lengths.clamp(max=cap - 1).tolist()
    rows = torch.arange(output.sequences.shape[0])
    assert (output.sequences[rows, output.lengths] == tiny_model.config.eos_token_id).all()
    if cap == 1:
        assert output.sequences.tolist() == [[tiny_model.config.eos_token_id]] * input_ids.shape[0]
        assert output.sequences_scores.tolist() == [0.0] * input_ids.shape[0]


def test_cap_of_one_with_an_empty_source_in_the_batch(tiny_model):
    output = tiny_model.generate(torch.tensor([[1, 0, 0], [5, 6, 1]]), max_new_tokens=1, num_iterations=3,
                                 length_beam=2)
    assert output.tolist() == [[1], [1]]


# ---------------------------------------------------------------------------------------- non-finite models
@pytest.mark.parametrize("part", ["encoder", "decoder", "lm_head", "length_predictor"])
@pytest.mark.parametrize(
    "options",
    [{}, {"num_iterations": 1, "length_beam": 1}, {"num_iterations": 3, "length_beam": 1},
     {"num_iterations": 1, "length_beam": 1, "return_dict_in_generate": True}],
)
def test_nan_weights_raise_instead_of_returning_garbage(tiny_model, source_batch, part, options):
    """NaN anywhere (the encoder, the decoder alone, the output projection, the length predictor) raises, also on
    the one-pass path that skips the normalisation of the last pass."""
    modules = {"encoder": tiny_model.model.encoder, "decoder": tiny_model.model.decoder,
               "lm_head": tiny_model.lm_head, "length_predictor": tiny_model.model.length_predictor}
    with torch.no_grad():
        for parameter in modules[part].parameters():
            parameter.fill_(float("nan"))
    input_ids, attention_mask = source_batch
    expected = "length logits" if part in ("encoder", "length_predictor", "lm_head") else "token scores"
    with pytest.raises(NonFiniteScoresError, match=f"non-finite .*{expected}"):
        tiny_model.generate(input_ids, attention_mask=attention_mask, **options)


def test_infinite_logits_raise(tiny_model, source_batch):
    with torch.no_grad():
        tiny_model.model.decoder.layers[-1].ffn.fc2.bias.fill_(float("inf"))
    assert issubclass(NonFiniteScoresError, FloatingPointError)
    with pytest.raises(FloatingPointError, match="token scores"):
        tiny_model.generate(source_batch[0], attention_mask=source_batch[1], num_iterations=2, length_beam=2)


# ----------------------------------------------------------------------------------- bounded logits buffer
def test_predict_tokens_is_independent_of_the_chunking(tiny_model):
    torch.manual_seed(1)
    hidden = torch.randn(3, 5, TINY["d_model"])
    special = [0, 1, 2]
    logits = tiny_model.lm_head(hidden).float()
    log_probs = logits.log_softmax(-1)
    logits[..., special] = float("-inf")
    expected_tokens = logits.argmax(-1)
    expected_scores = log_probs.gather(-1, expected_tokens[..., None]).squeeze(-1)
    for budget in (1, 4 * TINY["vocab_size"] * 4, 10**9):  # 1 position per chunk, 4 positions, one chunk
        tokens, scores = predict_tokens(hidden, tiny_model.lm_head, special, budget_bytes=budget)
        assert torch.equal(tokens, expected_tokens)
        torch.testing.assert_close(scores, expected_scores, atol=1e-6, rtol=0)
    tokens, scores = predict_tokens(hidden, tiny_model.lm_head, special, with_scores=False, budget_bytes=40)
    assert torch.equal(tokens, expected_tokens) and (scores == 0).all()
    empty_tokens, empty_scores = predict_tokens(hidden[:, :0], tiny_model.lm_head, special)
    assert empty_tokens.shape == empty_scores.shape == (3, 0)


@pytest.mark.parametrize(("num_iterations", "length_beam"), [(1, 1), (5, 3)])
def test_a_tiny_logits_budget_changes_no_output(tiny_model, source_batch, monkeypatch, num_iterations, length_beam):
    """A budget of 3 positions per chunk: the output projection never sees more rows, and tokens and scores equal
    those of the unbounded computation."""
    input_ids, attention_mask = source_batch
    favour_long_targets(tiny_model)
    options = {"num_iterations": num_iterations, "length_beam": length_beam, "return_dict_in_generate": True}
    monkeypatch.setattr(method_base, "LOGITS_BUDGET_BYTES", 10**12)
    unbounded = tiny_model.generate(input_ids, attention_mask=attention_mask, **options)
    positions_per_call = []
    tiny_model.lm_head.register_forward_hook(lambda _, args, __: positions_per_call.append(args[0].shape[:-1]))
    monkeypatch.setattr(method_base, "LOGITS_BUDGET_BYTES", 3 * 4 * TINY["vocab_size"])
    bounded = tiny_model.generate(input_ids, attention_mask=attention_mask, **options)
    assert max(shape.numel() for shape in positions_per_call) == 3
    assert len(positions_per_call) >= 3 * num_iterations  # several chunks per pass
    assert torch.equal(bounded.sequences, unbounded.sequences)
    torch.testing.assert_close(bounded.sequences_scores, unbounded.sequences_scores, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------ option checks
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decoding_strategy": "beam_search"}, "decoding_strategy"),
        ({"decoding_strategy": ["mask_predict"]}, "decoding_strategy"),
        ({"decoding_strategy": None}, "decoding_strategy"),
        ({"num_iterations": 2.0}, "num_iterations"),
        ({"num_iterations": "3"}, "num_iterations"),
        ({"num_iterations": True}, "num_iterations"),
        ({"num_iterations": None}, "num_iterations"),
        ({"length_beam": 1.5}, "length_beam"),
        ({"length_beam": "2"}, "length_beam"),
        ({"max_new_tokens": "3"}, "max_new_tokens"),
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
        ({"max_length": 0}, "max_length"),
        ({"num_beams": "4"}, "num_beams"),
        ({"do_sample": "no"}, "do_sample"),
        ({"return_dict_in_generate": "yes"}, "return_dict_in_generate"),
        ({"foo": 1}, "foo"),
        ({"top_k": 5, "num_iterations": 2}, "top_k"),
        ({"generation_config": {"num_iterations": 2}}, "generation_config"),
    ],
)
def test_bad_options_raise_before_any_computation(tiny_model, source_batch, kwargs, message):
    encoder_calls = count_encoder_calls(tiny_model)
    with pytest.raises(ValueError, match=message):
        tiny_model.generate(source_batch[0], attention_mask=source_batch[1], **kwargs)
    assert encoder_calls[0] == 0


@pytest.mark.parametrize("objective", ["cmlm", "ctc", "dag"])
def test_autoregressive_options_are_refused_naming_the_methods_own(objective):
    from nat_hf import NATConfig, NATForConditionalGeneration

    from .test_remote_code import objective_config_kwargs

    model = NATForConditionalGeneration(NATConfig(**objective_config_kwargs(objective))).eval()
    own = re.escape(f"method '{objective}' takes {sorted(model.nat_method.option_defaults())}")
    for kwargs in ({"do_sample": True}, {"num_beams": 4}):
        with pytest.raises(ValueError, match=own):
            model._generation_options(None, kwargs)


def test_generation_options_resolves_the_given_options(tiny_model):
    """What callers that validate up front (translate_texts, the pipeline) get back; they pass a copy, since the
    call pops what it reads (tests/test_inference.py checks that the caller's dict stays untouched)."""
    options = tiny_model._generation_options(None, {"num_iterations": 2, "max_new_tokens": 4})
    assert options["num_iterations"] == 2 and options["max_length"] == 3
    assert options["return_dict_in_generate"] is False
    with pytest.raises(ValueError, match="length_beam"):
        tiny_model._generation_options(None, {"length_beam": 0})


def test_numpy_and_tensor_integers_are_accepted_as_integer_options(tiny_model, source_batch):
    import numpy as np

    input_ids, attention_mask = source_batch
    expected = tiny_model.generate(input_ids, attention_mask=attention_mask, num_iterations=2, length_beam=2,
                                   max_new_tokens=4)
    for integer in (np.int64, torch.tensor):
        output = tiny_model.generate(input_ids, attention_mask=attention_mask, num_iterations=integer(2),
                                     length_beam=integer(2), max_new_tokens=integer(4), num_beams=integer(1))
        assert torch.equal(output, expected)
    for bad in (True, 2.0, np.float32(2), "2"):
        with pytest.raises(ValueError, match="num_iterations must be an integer"):
            tiny_model.generate(input_ids, attention_mask=attention_mask, num_iterations=bad)
