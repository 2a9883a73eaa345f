import dataclasses
import json

import pytest
from transformers import AutoConfig

from nat_hf import NATConfig
from nat_hf.methods import METHODS

from .conftest import TINY, objective_config_kwargs


def test_round_trip_through_auto_config(tmp_path):
    config = NATConfig(**TINY, objective="vanilla", decoder_input_mode="copy", length_prediction_mode="absolute")
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "nat"
    assert saved["auto_map"]["AutoConfig"] == "configuration_nat.NATConfig"
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, NATConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()


def test_length_classes_follow_the_mode():
    assert NATConfig(**TINY).num_length_classes == 2 * TINY["max_length_offset"] + 1
    absolute = NATConfig(**{**TINY, "length_prediction_mode": "absolute"})
    assert absolute.num_length_classes == TINY["max_target_positions"] + 1


def test_hf_standard_names_map_to_ours():
    config = NATConfig(**TINY)
    assert config.hidden_size == TINY["d_model"]
    assert config.num_hidden_layers == TINY["encoder_layers"]
    assert config.is_encoder_decoder


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"objective": "autoregressive"}, "objective"),
        ({"objective": "cmlm", "decoder_input_mode": "copy"}, "decoder_input_mode"),
        ({"decoder_input_mode": "uniform"}, "decoder_input_mode"),
        ({"length_prediction_mode": "relative"}, "length_prediction_mode"),
        ({"encoder_attention_heads": 5}, "encoder_attention_heads"),
        ({"decoder_attention_heads": 0}, "decoder_attention_heads"),
        ({"dropout": 1.5}, "dropout"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"mask_token_id": 40}, "mask_token_id"),
        ({"mask_token_id": 0}, "special token ids must be distinct"),
        ({"position_embedding_type": "rotary"}, "position_embedding_type"),
        ({"max_length_offset": 0}, "max_length_offset"),
        ({"vocab_size": 0}, "vocab_size"),
    ],
)
def test_invalid_values_raise_value_error_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        NATConfig(**{**TINY, **overrides})


def test_every_objective_in_the_table_is_a_valid_config():
    for name in METHODS:
        mode = "mask" if name == "cmlm" else "copy"
        config = NATConfig(**objective_config_kwargs(name), decoder_input_mode=mode)
        assert config.objective == name
        assert set(config.method_options) == {option.name for option in
                                              dataclasses.fields(METHODS[name].TrainingOptions)}
