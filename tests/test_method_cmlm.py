import torch
import torch.nn.functional as F

from nat_hf.method_base import masked_token_loss
from nat_hf.method_cmlm import sample_cmlm_mask
from nat_hf.methods import METHODS


def test_cmlm_mask_draws_between_one_and_all_tokens_of_each_target():
    torch.manual_seed(0)
    target_mask = torch.tensor([[True] * 6 + [False] * 2, [True] * 2 + [False] * 6, [False] * 8])
    seen = [set(), set()]
    for _ in range(300):
        masked = sample_cmlm_mask(target_mask)
        assert not (masked & ~target_mask).any()  # never on padding
        counts = masked.sum(-1).tolist()
        assert 1 <= counts[0] <= 6 and 1 <= counts[1] <= 2 and counts[2] == 0
        seen[0].add(counts[0])
        seen[1].add(counts[1])
    assert seen == [set(range(1, 7)), {1, 2}]  # every count is drawn


def test_masked_token_loss_is_label_smoothed_cross_entropy_on_selected_positions():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 11), torch.randint(0, 11, (2, 4))
    selected = torch.tensor([[True, False, True, False], [False, False, False, True]])
    expected = F.cross_entropy(logits[selected], target[selected], label_smoothing=0.1)
    torch.testing.assert_close(masked_token_loss(logits, target, selected, 0.1), expected)
    nothing = masked_token_loss(logits, target, torch.zeros_like(selected), 0.1)
    assert nothing.item() == 0.0


def test_cmlm_objective_trains_on_masked_positions_only(tiny_model):
    tiny_model.train()
    input_ids = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]])
    attention_mask = input_ids != 0
    encoder_states = tiny_model.model.encode(input_ids, attention_mask)
    context = tiny_model.model.make_context(input_ids, attention_mask, encoder_states)
    target = torch.tensor([[10, 11, 12, 13], [14, 15, 0, 0]])
    target_mask = target != 0
    torch.manual_seed(5)
    masked = sample_cmlm_mask(target_mask)
    torch.manual_seed(5)
    logits, loss = METHODS["cmlm"].token_loss(tiny_model, context, target, target_mask)
    expected = masked_token_loss(logits, target, masked, tiny_model.config.label_smoothing)
    torch.testing.assert_close(loss, expected)


def test_objective_table_has_the_shared_signature():
    assert {"cmlm", "vanilla"} <= set(METHODS)
    assert all(name == method.name for name, method in METHODS.items())
