import json

import torch
from transformers import MarianConfig, MarianMTModel

from nat_hf import NATConfig, NATForConditionalGeneration
from nat_hf.ar_init import init_from_ar, nat_name

from .conftest import TINY


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
