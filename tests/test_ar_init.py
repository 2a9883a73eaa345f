import json

import pytest
import torch
from transformers import MarianConfig, MarianMTModel

from nat_hf import NATConfig, NATForConditionalGeneration
from nat_hf.ar_init import init_from_ar, nat_name
from nat_hf.methods import METHODS

from .conftest import TINY
from .test_remote_code import objective_config_kwargs


def tiny_marian(decoder_layers: int = 1) -> MarianMTModel:
    torch.manual_seed(1)
    config = MarianConfig(vocab_size=TINY["vocab_size"], d_model=TINY["d_model"], encoder_layers=2,
                          decoder_layers=decoder_layers, encoder_attention_heads=4, decoder_attention_heads=4,
                          encoder_ffn_dim=TINY["encoder_ffn_dim"], decoder_ffn_dim=TINY["decoder_ffn_dim"],
                          max_position_embeddings=64, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return MarianMTModel(config)


def test_name_mapping():
    assert nat_name("model.encoder.layers.1.fc2.bias") == "model.encoder.layers.1.ffn.fc2.bias"
    assert nat_name("model.decoder.layers.0.encoder_attn.k_proj.weight") == \
        "model.decoder.layers.0.encoder_attn.k_proj.weight"
    assert nat_name("model.decoder.layers.0.encoder_attn_layer_norm.bias") == \
        "model.decoder.layers.0.encoder_attn_layer_norm.bias"
    assert nat_name("final_logits_bias") is None


def test_matching_tensors_are_copied_and_the_rest_reported():
    marian = tiny_marian(decoder_layers=1)  # the NAT has 2 decoder layers: its second one has no AR counterpart
    nat = NATForConditionalGeneration(NATConfig(**TINY, position_embedding_type="sinusoidal"))
    report = init_from_ar(nat, marian)
    nat_state, ar_state = nat.state_dict(), marian.state_dict()
    for ar_key, tensor in ar_state.items():
        target = nat_name(ar_key)
        if target in report.copied:
            expected = tensor[: nat_state[target].shape[0]] if "embed_positions" in target else tensor
            assert torch.equal(nat_state[target], expected), target
    assert "model.shared.weight" in report.copied
    assert "model.decoder.layers.0.self_attn.q_proj.weight" in report.copied
    assert "model.decoder.layers.0.encoder_attn.v_proj.bias" in report.copied
    assert "model.encoder.layers.1.ffn.fc1.weight" in report.copied
    assert nat.lm_head.weight is nat.model.shared.weight  # still tied, so the output layer is the AR one too
    assert "model.length_predictor.weight" in report.newly_initialised
    assert "model.decoder.layers.1.ffn.fc1.weight" in report.newly_initialised
    assert not any(name.startswith("model.decoder.layers.0.") for name in report.newly_initialised)
    assert report.ar_unused == ["final_logits_bias"]
    json.dumps(report.to_dict())
    assert "2 NAT tensors" not in report.summary()  # it counts the whole second decoder layer too


def test_shape_mismatches_are_reported_not_copied():
    marian = tiny_marian()
    nat = NATForConditionalGeneration(NATConfig(**{**TINY, "encoder_ffn_dim": 48, "decoder_ffn_dim": 48}))
    before = nat.model.encoder.layers[0].ffn.fc1.weight.clone()
    report = init_from_ar(nat, marian)
    assert "model.encoder.layers.0.ffn.fc1.weight: (48, 32) vs (64, 32)" in report.shape_mismatch
    assert torch.equal(nat.model.encoder.layers[0].ffn.fc1.weight, before)
    assert "model.encoder.layers.0.self_attn.k_proj.weight" in report.copied


@pytest.mark.parametrize("objective", sorted(METHODS))
def test_a_vocabulary_with_appended_rows_copies_the_ar_rows_and_reports_the_new_ones(objective):
    """A NAT vocabulary one token longer than the teacher's (a blank appended as the last row, as ctc needs):
    rows [:teacher vocab] are the teacher's, the last row keeps its initialisation, and the method's heads (length
    predictor, link scorer, none) are reported as new."""
    marian = tiny_marian()
    teacher_vocab = marian.config.vocab_size
    config = NATConfig(**{**objective_config_kwargs(objective), "vocab_size": teacher_vocab + 1,
                          "blank_token_id": teacher_vocab})
    torch.manual_seed(2)
    nat = NATForConditionalGeneration(config)
    blank_row = nat.model.shared.weight[teacher_vocab].clone()
    report = init_from_ar(nat, marian)
    assert torch.equal(nat.model.shared.weight[:teacher_vocab], marian.model.shared.weight)
    assert torch.equal(nat.model.shared.weight[teacher_vocab], blank_row)
    assert nat.lm_head.weight is nat.model.shared.weight
    assert "model.shared.weight" in report.copied
    # an upsampled decoder (ctc, dag) may have more positions than the teacher: that table alone is left fresh
    assert all(entry.startswith("model.decoder.embed_positions.weight:") for entry in report.shape_mismatch)
    assert report.new_rows == [teacher_vocab] and report.to_dict()["new_rows"] == [teacher_vocab]
    assert f"vocabulary rows [{teacher_vocab}] newly initialised" in report.summary()
    heads = {f"model.{head}.{name}" for head, module in METHODS[objective].heads(config).items()
             for name in module.state_dict()}
    assert heads <= set(report.newly_initialised)
    assert "model.shared.weight" not in report.newly_initialised


def test_an_untied_output_projection_gets_the_ar_rows_too():
    marian = tiny_marian()
    teacher_vocab = marian.config.vocab_size
    torch.manual_seed(3)
    nat = NATForConditionalGeneration(NATConfig(**{**TINY, "vocab_size": teacher_vocab + 2,
                                                   "tie_word_embeddings": False}))
    extra = nat.lm_head.weight[teacher_vocab:].clone()
    report = init_from_ar(nat, marian)
    assert nat.lm_head.weight is not nat.model.shared.weight
    assert torch.equal(nat.lm_head.weight[:teacher_vocab], marian.lm_head.weight)
    assert torch.equal(nat.lm_head.weight[teacher_vocab:], extra)
    assert "lm_head.weight" in report.copied and "lm_head.weight" not in report.newly_initialised
    assert report.new_rows == [teacher_vocab, teacher_vocab + 1]


def test_a_vocabulary_smaller_than_the_teachers_is_an_error_naming_both_sizes():
    marian = tiny_marian()
    nat = NATForConditionalGeneration(NATConfig(**{**TINY, "vocab_size": TINY["vocab_size"] - 1}))
    with pytest.raises(ValueError, match=r"NAT vocabulary \(39 tokens\) is smaller than the AR model's \(40 tokens"):
        init_from_ar(nat, marian)
