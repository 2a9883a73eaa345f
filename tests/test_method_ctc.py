"""CTC math checked against brute-force enumeration of every alignment on tiny inputs (L <= 6, V <= 4)."""

import itertools
from functools import cache

import pytest
import torch
import torch.nn.functional as F

from nat_hf.method_ctc import (
    ctc_best_alignment,
    ctc_collapse,
    ctc_greedy_decode,
    ctc_loss,
    required_input_lengths,
    upsampled_lengths,
)

PAD = -7  # an output padding value no label can take, so misplaced padding shows


def collapse_reference(labels, blank):
    """Merge adjacent repeats, then drop blanks: the definition, one sequence at a time."""
    merged = [label for i, label in enumerate(labels) if i == 0 or label != labels[i - 1]]
    return [label for label in merged if label != blank]


@cache
def all_alignments(length, vocab, blank):
    """Every label sequence of `length` over `vocab` labels, as a `[N, length]` tensor, and what each collapses to."""
    sequences = list(itertools.product(range(vocab), repeat=length))
    return torch.tensor(sequences, dtype=torch.long).reshape(len(sequences), length), [
        tuple(collapse_reference(list(s), blank)) for s in sequences
    ]


def brute_force(logprobs, target, blank):
    """For one row (`logprobs [l, V]`, a target list): log P(target) and the best alignment with its score."""
    length, vocab = logprobs.shape
    sequences, collapsed = all_alignments(length, vocab, blank)
    scores = logprobs.gather(1, sequences.T).sum(dim=0) if length else torch.zeros(1, dtype=logprobs.dtype)
    matching = torch.tensor([c == tuple(target) for c in collapsed])
    if not matching.any():
        return torch.tensor(float("-inf"), dtype=logprobs.dtype), None, float("-inf")
    chosen = scores[matching]
    best = int(chosen.argmax())
    return torch.logsumexp(chosen, dim=0), sequences[matching][best], float(chosen[best].detach())


def random_batch(generator, batch, positions, vocab, blank, max_target, feasible_only=True):
    """Random float64 log-probabilities and right-padded targets (padding -100) of random lengths and lengths."""
    logits = torch.randn(batch, positions, vocab, generator=generator, dtype=torch.float64) * 2
    labels = [v for v in range(vocab) if v != blank]
    input_lengths, targets = [], []
    while len(targets) < batch:
        length = int(torch.randint(0, positions + 1, (1,), generator=generator))
        size = int(torch.randint(0, max_target + 1, (1,), generator=generator))
        target = [labels[int(i)] for i in torch.randint(0, len(labels), (size,), generator=generator)]
        fits = size + sum(a == b for a, b in itertools.pairwise(target)) <= length
        if fits or not feasible_only:
            input_lengths.append(length)
            targets.append(target)
    width = max(max(len(t) for t in targets), 1)
    padded = torch.full((batch, width), -100, dtype=torch.long)
    for row, target in enumerate(targets):
        padded[row, : len(target)] = torch.tensor(target, dtype=torch.long)
    return logits, torch.tensor(input_lengths), padded, torch.tensor([len(t) for t in targets]), targets


SHAPES = [  # (batch, positions L, vocab V incl. blank, blank id, longest target)
    (5, 4, 3, 0, 3),
    (6, 5, 4, 2, 4),
    (4, 6, 3, 1, 4),
    (3, 6, 4, 3, 5),
]


def test_collapse_on_hand_built_rows():
    tokens = torch.tensor([
        [5, 5, 0, 5, 6, 6],  # a a _ a b b -> a a b
        [0, 0, 0, 0, 0, 0],  # all blank -> empty
        [7, 0, 7, 7, 9, 9],  # only the first 4 count -> 7 7
    ])
    collapsed, lengths = ctc_collapse(tokens, torch.tensor([6, 6, 4]), blank=0, pad=PAD)
    assert lengths.tolist() == [3, 0, 2]
    assert collapsed.tolist() == [[5, 5, 6], [PAD, PAD, PAD], [7, 7, PAD]]
    empty, empty_lengths = ctc_collapse(tokens[:, :0], torch.zeros(3, dtype=torch.long), blank=0, pad=PAD)
    assert empty.shape == (3, 0) and empty_lengths.tolist() == [0, 0, 0]


def test_collapse_of_random_sequences_equals_the_python_reference():
    generator = torch.Generator().manual_seed(0)
    for blank in (0, 2):
        tokens = torch.randint(0, 4, (200, 9), generator=generator)
        lengths = torch.randint(0, 10, (200,), generator=generator)
        collapsed, out_lengths = ctc_collapse(tokens, lengths, blank=blank, pad=PAD)
        rows = zip(tokens.tolist(), lengths.tolist(), strict=True)
        expected = [collapse_reference(row[:n], blank) for row, n in rows]
        assert out_lengths.tolist() == [len(e) for e in expected]
        assert collapsed.size(1) == max(len(e) for e in expected)
        assert collapsed.tolist() == [e + [PAD] * (collapsed.size(1) - len(e)) for e in expected]


def test_collapse_rejects_bad_lengths():
    with pytest.raises(ValueError, match="lengths must lie in"):
        ctc_collapse(torch.zeros(2, 3, dtype=torch.long), torch.tensor([1, 4]), blank=0, pad=PAD)


@pytest.mark.parametrize("shape", SHAPES)
def test_ctc_loss_equals_brute_force_on_padded_batches(shape):
    batch, positions, vocab, blank, max_target = shape
    generator = torch.Generator().manual_seed(sum(shape))
    logits, input_lengths, target, target_lengths, targets = random_batch(
        generator, batch, positions, vocab, blank, max_target)
    logprobs = logits.log_softmax(-1)
    per_row = []
    for row in range(batch):
        length = int(input_lengths[row])
        log_p, _, _ = brute_force(logprobs[row, :length], targets[row], blank)
        expected = -log_p / max(len(targets[row]), 1)
        # the row alone, unpadded, equals the brute force
        alone = ctc_loss(logprobs[row: row + 1, :length], input_lengths[row: row + 1],
                         torch.tensor([targets[row]], dtype=torch.long).reshape(1, -1),
                         target_lengths[row: row + 1], blank)
        assert alone.skipped == 0
        assert alone.loss.item() == pytest.approx(expected.item(), abs=1e-5)
        per_row.append(expected)
    output = ctc_loss(logprobs, input_lengths, target, target_lengths, blank)
    assert output.skipped == 0
    assert output.loss.item() == pytest.approx(torch.stack(per_row).mean().item(), abs=1e-5)


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_ctc_loss_gradient_through_log_softmax_equals_brute_force(shape):
    batch, positions, vocab, blank, max_target = shape
    generator = torch.Generator().manual_seed(7 + sum(shape))
    logits, input_lengths, target, target_lengths, targets = random_batch(
        generator, batch, positions, vocab, blank, max_target)
    ours = logits.clone().requires_grad_(True)
    ctc_loss(ours.log_softmax(-1), input_lengths, target, target_lengths, blank).loss.backward()
    reference = logits.clone().requires_grad_(True)
    logprobs = reference.log_softmax(-1)
    total = sum(-brute_force(logprobs[row, : int(input_lengths[row])], targets[row], blank)[0]
                / max(len(targets[row]), 1) for row in range(batch)) / batch
    total.backward()
    assert torch.allclose(ours.grad, reference.grad, atol=1e-8)


def test_ctc_loss_skips_and_counts_targets_that_cannot_fit():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    # row 1: 3 tokens + 1 repeat need 4 positions but have 3; rows 0 and 2 fit
    target = torch.tensor([[1, 2, 0], [1, 1, 2], [3, 0, 0]])
    target_lengths, input_lengths = torch.tensor([2, 3, 1]), torch.tensor([4, 3, 2])
    assert required_input_lengths(target, target_lengths).tolist() == [2, 4, 1]
    logprobs = logits.log_softmax(-1)
    plain = F.ctc_loss(logprobs.transpose(0, 1), target, input_lengths, target_lengths, blank=0, reduction="none")
    assert torch.isinf(plain[1])  # what torch gives for that row without the guard
    output = ctc_loss(logprobs, input_lengths, target, target_lengths, blank=0)
    assert output.skipped == 1
    kept = ctc_loss(logprobs[[0, 2]], input_lengths[[0, 2]], target[[0, 2]], target_lengths[[0, 2]], blank=0)
    assert kept.skipped == 0 and output.loss.item() == pytest.approx(kept.loss.item(), abs=1e-12)
    output.loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[1].abs().max() == 0 and logits.grad[0].abs().max() > 0

    logits.grad = None
    nothing_fits = ctc_loss(logits.log_softmax(-1)[1:2], input_lengths[1:2], target[1:2], target_lengths[1:2], 0)
    assert nothing_fits.skipped == 1 and nothing_fits.loss.item() == 0.0
    nothing_fits.loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_ctc_loss_raises_on_an_infinite_loss_for_a_target_that_fits():
    logprobs = torch.randn(1, 3, 3, dtype=torch.float64).log_softmax(-1)
    logprobs[..., 2] = float("-inf")  # label 2 can never be emitted
    with pytest.raises(FloatingPointError, match="not finite"):
        ctc_loss(logprobs, torch.tensor([3]), torch.tensor([[2]]), torch.tensor([1]), blank=0)


def test_ctc_loss_rejects_bad_inputs():
    logprobs = torch.randn(2, 4, 3).log_softmax(-1)
    lengths, target, target_lengths = torch.tensor([4, 4]), torch.tensor([[1, 2], [2, 0]]), torch.tensor([2, 1])
    with pytest.raises(ValueError, match="blank id 0 appears inside a target"):
        ctc_loss(logprobs, lengths, target, torch.tensor([2, 2]), blank=0)
    with pytest.raises(ValueError, match="input_lengths must lie in"):
        ctc_loss(logprobs, torch.tensor([5, 4]), target, target_lengths, blank=0)
    with pytest.raises(ValueError, match="target ids must lie in"):
        ctc_loss(logprobs, lengths, torch.tensor([[1, 3], [1, 0]]), target_lengths, blank=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ctc_loss(logprobs, lengths, target, target_lengths, blank=3)


@pytest.mark.parametrize("shape", SHAPES)
def test_best_alignment_equals_brute_force_argmax_on_padded_batches(shape):
    batch, positions, vocab, blank, max_target = shape
    generator = torch.Generator().manual_seed(100 + sum(shape))
    logits, input_lengths, target, target_lengths, targets = random_batch(
        generator, batch, positions, vocab, blank, max_target)
    logprobs = logits.log_softmax(-1)
    output = ctc_best_alignment(logprobs, input_lengths, target, target_lengths, blank)
    assert output.alignment.shape == (batch, positions) and output.feasible.all()
    collapsed, collapsed_lengths = ctc_collapse(output.alignment, input_lengths, blank, PAD)
    for row in range(batch):
        length = int(input_lengths[row])
        _, best, best_score = brute_force(logprobs[row, :length], targets[row], blank)
        assert output.alignment[row, :length].tolist() == best.tolist()
        assert (output.alignment[row, length:] == blank).all()
        assert output.score[row].item() == pytest.approx(best_score, abs=1e-5)
        assert collapsed[row, : collapsed_lengths[row]].tolist() == targets[row]
        alone = ctc_best_alignment(logprobs[row: row + 1, :length], input_lengths[row: row + 1],
                                   torch.tensor([targets[row]], dtype=torch.long).reshape(1, -1),
                                   target_lengths[row: row + 1], blank)
        assert alone.alignment[0].tolist() == best.tolist()
        assert alone.score[0].item() == pytest.approx(best_score, abs=1e-5)


def test_best_alignment_flags_infeasible_rows():
    generator = torch.Generator().manual_seed(5)
    logprobs = torch.randn(3, 4, 4, generator=generator, dtype=torch.float64).log_softmax(-1)
    target = torch.tensor([[1, 2, 0], [1, 1, 2], [3, 0, 0]])
    output = ctc_best_alignment(logprobs, torch.tensor([4, 3, 2]), target, torch.tensor([2, 3, 1]), blank=0)
    assert output.feasible.tolist() == [True, False, True]
    assert output.score[1] == float("-inf") and torch.isfinite(output.score[[0, 2]]).all()
    assert (output.alignment[1] == 0).all()
    # fits by length but every alignment needs a label of probability 0
    impossible = logprobs.clone()
    impossible[2, :, 3] = float("-inf")
    assert not ctc_best_alignment(impossible, torch.tensor([4, 3, 2]), target, torch.tensor([2, 3, 1]), 0).feasible[2]


def test_greedy_decode_equals_argmax_then_collapse():
    generator = torch.Generator().manual_seed(11)
    logprobs = torch.randn(6, 7, 6, generator=generator).log_softmax(-1)
    lengths = torch.tensor([7, 5, 0, 3, 7, 1])
    blank, forbidden = 4, (0, 1)
    output = ctc_greedy_decode(logprobs, lengths, blank=blank, pad=PAD, forbidden_ids=forbidden)
    allowed = [v for v in range(6) if v not in forbidden]
    for row in range(6):
        n = int(lengths[row])
        labels = [max(allowed, key=lambda v: logprobs[row, t, v].item()) for t in range(n)]
        expected = collapse_reference(labels, blank)
        assert output.lengths[row].item() == len(expected)
        assert output.tokens[row, : len(expected)].tolist() == expected
        assert (output.tokens[row, len(expected):] == PAD).all()
        mean = sum(logprobs[row, t, v].item() for t, v in enumerate(labels)) / max(n, 1)
        assert output.scores[row].item() == pytest.approx(mean, abs=1e-6)
    assert not any(v in forbidden for v in output.tokens[output.tokens != PAD].tolist())


def test_greedy_decode_rejects_forbidding_the_blank():
    with pytest.raises(ValueError, match="cannot be forbidden"):
        ctc_greedy_decode(torch.zeros(1, 2, 3), torch.tensor([2]), blank=2, pad=0, forbidden_ids=(0, 2))


def test_upsampled_lengths():
    assert upsampled_lengths(torch.tensor([3, 1, 0]), 2, 8).tolist() == [6, 2, 0]
    assert upsampled_lengths(torch.tensor([10, 3]), 1.1, 20).tolist() == [11, 4]
    with pytest.raises(ValueError, match="exceeds the decoder's 8 positions"):
        upsampled_lengths(torch.tensor([3, 5]), 2, 8)
    for ratio in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="upsampling ratio"):
            upsampled_lengths(torch.tensor([3]), ratio, 8)
