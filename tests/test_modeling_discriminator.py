"""The adversarial discriminator: ids and one-hot distributions score alike, padding does not matter, save/load
round trip, bad input, and it learns to tell references from shuffled or corrupted targets."""

import pytest
import torch
import torch.nn.functional as F

from nat_hf.adversarial import discriminator_loss
from nat_hf.modeling_discriminator import NATDiscriminator, NATDiscriminatorConfig

TINY_DISCRIMINATOR = dict(vocab_size=40, d_model=32, layers=2, attention_heads=4, ffn_dim=64, dropout=0.0,
                          max_source_positions=24, max_target_positions=24)


@pytest.fixture
def discriminator() -> NATDiscriminator:
    torch.manual_seed(0)
    return NATDiscriminator(NATDiscriminatorConfig(**TINY_DISCRIMINATOR)).eval()


def batch():
    input_ids = torch.tensor([[5, 6, 7, 8, 1], [9, 10, 1, 0, 0]])
    target = torch.tensor([[11, 12, 13, 14], [15, 16, 17, 0]])
    return input_ids, input_ids != 0, target, target != 0


def test_token_ids_and_their_one_hot_rows_score_alike(discriminator):
    input_ids, attention_mask, target, target_mask = batch()
    by_ids = discriminator(input_ids, attention_mask, target_ids=target, target_mask=target_mask).logits
    one_hot = F.one_hot(target, 40).float()
    by_probs = discriminator(input_ids, attention_mask, target_probs=one_hot, target_mask=target_mask).logits
    assert by_ids.shape == (2,)
    torch.testing.assert_close(by_ids, by_probs)


def test_padding_does_not_change_a_score(discriminator):
    input_ids, attention_mask, target, target_mask = batch()
    together = discriminator(input_ids, attention_mask, target_ids=target, target_mask=target_mask).logits
    alone = discriminator(input_ids[1:, :3], attention_mask[1:, :3], target_ids=target[1:, :3]).logits
    torch.testing.assert_close(together[1:], alone, atol=1e-5, rtol=1e-5)
    # whatever a padded position holds is never read
    target[1, 3] = 39
    input_ids[1, 4] = 38
    again = discriminator(input_ids, attention_mask, target_ids=target, target_mask=target_mask).logits
    torch.testing.assert_close(together, again)


def test_save_and_load_round_trip(discriminator, tmp_path):
    input_ids, attention_mask, target, target_mask = batch()
    discriminator.save_pretrained(tmp_path)
    loaded = NATDiscriminator.from_pretrained(tmp_path).eval()
    assert loaded.config.to_diff_dict() == discriminator.config.to_diff_dict()
    torch.testing.assert_close(
        loaded(input_ids, attention_mask, target_ids=target, target_mask=target_mask).logits,
        discriminator(input_ids, attention_mask, target_ids=target, target_mask=target_mask).logits)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "exactly one of target_ids and target_probs"),
    ({"target_ids": torch.zeros(2, 3, dtype=torch.long), "target_probs": torch.zeros(2, 3, 40)}, "exactly one"),
    ({"target_probs": torch.zeros(2, 3, 41)}, r"target_probs must be \[batch, target_len, 40\]"),
    ({"target_ids": torch.full((2, 3), 40)}, r"outside the vocabulary \[0, 40\)"),
    ({"target_ids": torch.zeros(2, 25, dtype=torch.long)}, "exceed the discriminator's max_source_positions"),
])
def test_bad_input_is_a_value_error(discriminator, kwargs, message):
    input_ids, attention_mask, _, _ = batch()
    with pytest.raises(ValueError, match=message):
        discriminator(input_ids, attention_mask, **kwargs)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("attention_heads", 5, "`attention_heads` .5. must be >= 1 and divide `d_model`"),
    ("layers", 0, "`layers` must be >= 1"),
    ("dropout", 1.0, r"`dropout` must be in \[0, 1\)"),
])
def test_bad_config_values_are_value_errors(field, value, message):
    with pytest.raises(ValueError, match=message):
        NATDiscriminatorConfig(**{**TINY_DISCRIMINATOR, field: value})


def toy_pairs(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sources of 5 random tokens (ids 5..29) and their sorted copies as references: `[count, 5]` each, with their
    (all-true) masks."""
    source = torch.randint(5, 30, (count, 5), generator=generator)
    mask = torch.ones_like(source, dtype=torch.bool)
    return source, mask, source.sort(-1).values, mask


def corrupt(reference: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The first half shuffled (the same tokens in an order that is not sorted); the second half corrupted the way
    NAT outputs are: one token replaced by a repeat of its left neighbour."""
    fake = reference.clone()
    half = reference.shape[0] // 2
    for row in range(half):
        while torch.equal(fake[row], reference[row]):
            fake[row] = reference[row, torch.randperm(reference.shape[1], generator=generator)]
    for row in range(half, reference.shape[0]):
        position = int(torch.randint(1, reference.shape[1], (1,), generator=generator))
        fake[row, position] = fake[row, position - 1]
        if torch.equal(fake[row], reference[row]):  # the two tokens were equal already: use one never sampled
            fake[row, position] = 4
    return fake


def test_the_discriminator_learns_to_tell_references_from_shuffled_or_corrupted_targets():
    """600 updates. Measured over seeds 0-3 at 1 and 2 threads (the result depends on both): held-out accuracy
    0.91-0.96, shuffled targets caught 0.97-0.995, one repeated token caught 0.69-0.90 (at 500 updates the last fell
    to 0.33 once); the bounds leave that spread room."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = NATDiscriminator(NATDiscriminatorConfig(**TINY_DISCRIMINATOR))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(600):
        source, source_mask, reference, target_mask = toy_pairs(64, generator)
        fake = corrupt(reference, generator)
        logits = model(source.repeat(2, 1), source_mask.repeat(2, 1), target_ids=torch.cat([reference, fake]),
                       target_mask=target_mask.repeat(2, 1)).logits
        loss, _ = discriminator_loss(logits[:64], logits[64:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    held_out = torch.Generator().manual_seed(1)
    source, source_mask, reference, target_mask = toy_pairs(400, held_out)
    fake = corrupt(reference, held_out)
    with torch.no_grad():
        real_logits = model(source, source_mask, target_ids=reference, target_mask=target_mask).logits
        fake_logits = model(source, source_mask, target_ids=fake, target_mask=target_mask).logits
    _, accuracy = discriminator_loss(real_logits, fake_logits)
    assert accuracy >= 0.9, f"held-out accuracy {float(accuracy):.3f}"
    shuffled, repeated = (fake_logits[:200] < 0).float().mean(), (fake_logits[200:] < 0).float().mean()
    assert shuffled >= 0.95 and repeated >= 0.65, (float(shuffled), float(repeated))
