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


def test_suffix_masking_observes_a_prefix_and_masks_the_rest():
    """`suffix_mask_rate`: that share of targets masked as a speculative drafter is asked, a random-length prefix
    observed and everything after it masked; rate 0 draws exactly Mask-Predict's masks."""
    target_mask = torch.tensor([[True] * 6 + [False] * 2, [True] * 3 + [False] * 5])
    torch.manual_seed(1)
    plain = [sample_cmlm_mask(target_mask) for _ in range(20)]
    torch.manual_seed(1)
    assert all(torch.equal(a, sample_cmlm_mask(target_mask, 0.0)) for a in plain)
    torch.manual_seed(0)
    prefixes = set()
    for _ in range(300):
        masked = sample_cmlm_mask(target_mask, 1.0)
        assert not (masked & ~target_mask).any()
        for row, length in enumerate((6, 3)):
            prefix = int((~masked[row, :length]).sum())
            assert masked[row, prefix:length].all() and not masked[row, :prefix].any()  # a suffix, >= 1 token
            prefixes.add((row, prefix))
    assert prefixes == {(0, p) for p in range(6)} | {(1, p) for p in range(3)}  # every prefix length is drawn
    torch.manual_seed(0)
    suffix_rows = sum(bool((m := sample_cmlm_mask(target_mask[:1], 0.5))[0, int((~m[0, :6]).sum()):6].all())
                      for _ in range(400))
    assert 200 <= suffix_rows <= 330  # half suffix-masked, plus random masks that are suffixes by chance (~1/4)


def test_suffix_mask_rate_is_a_cmlm_training_option_checked_by_name():
    import pytest

    from nat_hf import NATConfig

    from .conftest import TINY

    config = NATConfig(**TINY, method_options={"suffix_mask_rate": 0.5})
    assert config.method_options == {"suffix_mask_rate": 0.5}
    assert NATConfig(**TINY).method_options == {"suffix_mask_rate": 0.0}  # defaults filled in
    for bad in (1.5, -0.1, "half", True):
        with pytest.raises(ValueError, match="suffix_mask_rate must be a number in"):
            NATConfig(**TINY, method_options={"suffix_mask_rate": bad})
    with pytest.raises(ValueError, match="not options of method 'vanilla'"):
        NATConfig(**TINY, objective="vanilla", method_options={"suffix_mask_rate": 0.5})
