"""The methods (cmlm, vanilla) behind the model: outputs pinned before the restructure (issue 12) stay
bit-identical."""

import json
from pathlib import Path

import pytest
import torch

from nat_hf import NATConfig, NATForConditionalGeneration

from .conftest import TINY

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


@pytest.mark.parametrize("case", sorted(CASES))
def test_generate_and_loss_match_the_outputs_pinned_before_the_restructure(case):
    model = pinned_model(case)
    for index in range(4):
        pinned = PINNED[f"{case}/{index}"]
        output = model.generate(SOURCES, attention_mask=(SOURCES != 0).long(), return_dict_in_generate=True,
                                **pinned["options"])
        assert output.sequences.tolist() == pinned["sequences"], pinned["options"]
        assert output.lengths.tolist() == pinned["lengths"]
        assert torch.equal(output.sequences_scores, torch.tensor(pinned["scores"]))
    model.train()
    torch.manual_seed(1)
    output = model(input_ids=SOURCES, attention_mask=(SOURCES != 0).long(), labels=LABELS)
    values = [output.loss.item(), output.token_loss.item(), output.length_loss.item(), output.logits.sum().item()]
    assert values == PINNED[f"{case}/loss"]


def test_parameter_names_are_those_of_saved_models():
    """Checkpoints saved before the restructure load: same parameter names (the length head keeps
    `model.length_predictor`)."""
    model = NATForConditionalGeneration(NATConfig(**TINY))
    assert list(model.state_dict()) == PINNED["state_dict_keys"]
