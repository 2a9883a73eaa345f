"""CTC math checked against brute-force enumeration of every alignment on tiny inputs (L <= 6, V <= 4); the `ctc`
method (config rules, loss, glancing, decoding, save/load) on tiny models; and a toy learning check."""

import itertools
from functools import cache

import pytest
import torch
import torch.nn.functional as F

from nat_hf import NATConfig, NATForConditionalGeneration
from nat_hf.method_base import NonFiniteScoresError
from nat_hf.method_ctc import (
    CTCMethod,
    ctc_best_alignment,
    ctc_collapse,
    ctc_greedy_decode,
    ctc_loss,
    required_input_lengths,
    upsampled_lengths,
)
from nat_hf.toy import evaluate_toy_model, learn_toy_task

from .conftest import TINY

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


# ------------------------------------------------------------------------------------------------ the method
BLANK = 4
EOS, MASK = 1, 3
NEVER_PREDICTED = [0, EOS, MASK]  # pad, eos, mask (no bos in these configs); the blank is predicted
CTC = dict(TINY, max_target_positions=48, objective="ctc", blank_token_id=BLANK)  # 48 = 2 x max_source_positions


def ctc_model(mode: str = "mask", **method_options) -> NATForConditionalGeneration:
    """A tiny `ctc` model with upsampling ratio 2 (so a source of n tokens, eos included, gets 2n positions)."""
    config = NATConfig(**CTC, decoder_input_mode=mode, method_options={"upsample_ratio": 2.0, **method_options})
    torch.manual_seed(0)
    return NATForConditionalGeneration(config).eval()


def hand_plan(attention_mask):
    """Positions per row (2 x source length, eos included), their mask and `<mask>` decoder inputs."""
    lengths = 2 * attention_mask.long().sum(-1)
    positions = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]
    return lengths, positions, torch.full(positions.shape, MASK)


def context_of(model, input_ids):
    attention_mask = input_ids != 0
    return model.model.make_context(input_ids, attention_mask, model.model.encode(input_ids, attention_mask))


def test_config_requires_a_blank_token():
    with pytest.raises(ValueError, match="blank_token_id"):
        NATConfig(**dict(CTC, blank_token_id=None), method_options={"upsample_ratio": 2.0})


def test_config_requires_room_for_the_upsampled_source():
    NATConfig(**CTC, method_options={"upsample_ratio": 2.0})  # 48 = 2 x 24 fits
    with pytest.raises(ValueError, match=r"max_target_positions.*\(47\).*max_source_positions"):
        NATConfig(**dict(CTC, max_target_positions=47), method_options={"upsample_ratio": 2.0})
    with pytest.raises(ValueError, match=r"max_target_positions.*= 72"):
        NATConfig(**CTC)  # the default ratio 3 needs 72
    config = NATConfig(**dict(CTC, max_target_positions=72), decoder_input_mode="copy")
    assert config.method_options == {"glancing_ratio_start": 0.0, "glancing_ratio_end": None,
                                     "glancing_anneal_steps": 0, "upsample_ratio": 3.0}


@pytest.mark.parametrize("options, name", [
    ({"upsample_ratio": 0.5}, "upsample_ratio"),
    ({"upsample_ratio": float("nan")}, "upsample_ratio"),
    ({"upsample_ratio": "2"}, "upsample_ratio"),
    ({"upsample_ratio": True}, "upsample_ratio"),
    ({"glancing_ratio_start": 1.5}, "glancing_ratio_start"),
    ({"glancing_anneal_steps": -1}, "glancing_anneal_steps"),
    ({"length_beam": 2}, "length_beam"),
])
def test_bad_method_options_raise_naming_them(options, name):
    with pytest.raises(ValueError, match=rf"NATConfig: .*method_options.*{name}"):
        NATConfig(**CTC, method_options=options)


@pytest.mark.parametrize("mode", ["mask", "copy"])
def test_loss_equals_ctc_loss_of_the_models_own_log_probs(mode, source_batch):
    model = ctc_model(mode)
    input_ids, attention_mask = source_batch
    labels = torch.tensor([[7, 7, 8, 9, 1], [10, 11, 1, -100, -100], [12, 1, 0, 0, 0]])
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    lengths, positions, decoder_input_ids = hand_plan(attention_mask)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                   decoder_attention_mask=positions).logits
    target = torch.tensor([[7, 7, 8, 9], [10, 11, 0, 0], [12, 0, 0, 0]])
    expected = ctc_loss(logits.float().log_softmax(-1), lengths, target, torch.tensor([4, 2, 1]), BLANK)
    assert expected.skipped == 0
    assert torch.isfinite(output.loss)
    torch.testing.assert_close(output.loss, expected.loss)
    torch.testing.assert_close(output.token_loss, output.loss)
    assert output.length_loss is None and output.length_logits is None  # no length predictor
    assert output.logits.shape == (3, 14, 40)


def test_a_target_longer_than_its_graph_is_skipped_and_counted():
    model = ctc_model().train()
    input_ids = torch.tensor([[5, 1, 0], [6, 7, 1]])  # 4 and 6 positions
    target = torch.tensor([[8, 9, 10, 11, 12], [13, 14, 0, 0, 0]])  # row 0: 5 tokens > 4 positions
    result = model.nat_method.loss(model, context_of(model, input_ids), target, target != 0)
    assert result.counts["skipped_targets"].shape == ()
    assert int(result.counts["skipped_targets"]) == 1
    kept = ctc_loss(result.logits[1:].float().log_softmax(-1), torch.tensor([6]), target[1:, :2], torch.tensor([2]),
                    BLANK)
    assert torch.isfinite(result.total)
    torch.testing.assert_close(result.total, kept.loss)
    result.total.backward()
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    assert gradients and all(torch.isfinite(g).all() for g in gradients)
    # adjacent repeats need a blank between them: 3 tokens with 2 repeats need 5 positions, over 4
    repeated = torch.tensor([[8, 8, 8], [13, 0, 0]])
    result = model.nat_method.loss(model, context_of(model, input_ids), repeated, repeated != 0)
    assert int(result.counts["skipped_targets"]) == 1
    # every row skipped: a zero loss that still backpropagates
    model.zero_grad()
    result = model.nat_method.loss(model, context_of(model, input_ids[:1]), target[:1], target[:1] != 0)
    assert int(result.counts["skipped_targets"]) == 1 and result.total.item() == 0.0
    result.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def record_decoder_inputs(model, monkeypatch) -> list:
    """Record the decoder input ids of every decoder pass."""
    recorded, decode = [], model.model.decode

    def recording_decode(decoder_input_ids, *args, **kwargs):
        recorded.append(decoder_input_ids.clone())
        return decode(decoder_input_ids, *args, **kwargs)

    monkeypatch.setattr(model.model, "decode", recording_decode)
    return recorded


@pytest.mark.parametrize("ratio", [1.0, 0.5])
@pytest.mark.parametrize("mode", ["mask", "copy"])
def test_glancing_reveals_the_best_alignment_at_round_ratio_d_positions(ratio, mode, monkeypatch):
    model = ctc_model(mode, glancing_ratio_start=ratio).train()  # glancing is for training (dropout is 0)
    input_ids = torch.tensor([[5, 6, 7, 8, 1], [9, 10, 1, 0, 0], [11, 1, 0, 0, 0]])  # 10, 6, 4 positions
    target = torch.tensor([[12, 13, 13, 14, 0], [15, 16, 0, 0, 0], [17, 18, 19, 20, 21]])  # row 2 cannot fit
    context = context_of(model, input_ids)
    recorded = record_decoder_inputs(model, monkeypatch)
    result = model.nat_method.loss(model, context, target, target != 0)
    assert len(recorded) == 2  # the no-grad first pass, then the pass trained on
    first_inputs, second_inputs = recorded
    lengths, positions, mask_inputs = hand_plan(input_ids != 0)
    assert torch.equal(first_inputs, mask_inputs)
    # the first pass by hand: argmax labels (blank allowed) and the best alignment of the reference
    with torch.no_grad():
        logprobs = model.decoder_logits(mask_inputs, positions, context).float().log_softmax(-1)
    predicted = logprobs.clone()
    predicted[..., NEVER_PREDICTED] = float("-inf")
    predicted = predicted.argmax(-1)
    best = ctc_best_alignment(logprobs, lengths, target, (target != 0).sum(-1), BLANK)
    assert best.feasible.tolist() == [True, True, False]
    distance = ((predicted != best.alignment) & positions).sum(-1)
    assert (distance[:2] > 0).all()  # the untrained first pass is wrong somewhere
    revealed = second_inputs != MASK
    expected_counts = torch.floor(distance * ratio + 0.5).long() * best.feasible  # none on the infeasible row
    assert revealed.sum(-1).tolist() == expected_counts.tolist()
    assert not (revealed & ~positions).any()
    assert torch.equal(second_inputs[revealed], best.alignment[revealed])
    # the loss is CTC of the second pass over the whole sequence (the infeasible row skipped)
    expected = ctc_loss(result.logits.float().log_softmax(-1), lengths, target, (target != 0).sum(-1), BLANK)
    torch.testing.assert_close(result.total, expected.loss)
    assert int(result.counts["skipped_targets"]) == 1


def test_glancing_is_off_by_default_and_follows_its_schedule(monkeypatch):
    input_ids, target = torch.tensor([[5, 6, 1]]), torch.tensor([[7, 8]])
    for options, step, passes in [({}, None, 1), ({"glancing_ratio_start": 0.5}, None, 2),
                                  ({"glancing_ratio_start": 0.5, "glancing_ratio_end": 0.0,
                                    "glancing_anneal_steps": 10}, 10, 1)]:
        model = ctc_model(**options).train()
        recorded = record_decoder_inputs(model, monkeypatch)
        model.nat_method.loss(model, context_of(model, input_ids), target, target != 0, step=step)
        assert len(recorded) == passes, options


def generate(model, input_ids, attention_mask=None, **options):
    return model.generate(input_ids, attention_mask=attention_mask, return_dict_in_generate=True, **options)


@pytest.mark.parametrize("mode", ["mask", "copy"])
def test_decode_equals_the_collapse_of_the_argmax_over_the_planned_positions(mode, source_batch):
    model = ctc_model(mode)
    input_ids, attention_mask = source_batch
    lengths, positions, decoder_input_ids = hand_plan(attention_mask)

    def logits():
        with torch.no_grad():
            return model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                         decoder_attention_mask=positions).logits.float()

    # set the blank's output row (least squares on the decoder states) so that the blank wins at every third
    # position and loses elsewhere: the collapse then has blanks to drop as well as repeats to merge
    with torch.no_grad():
        context = context_of(model, input_ids)
        hidden = model.model.decode(decoder_input_ids, positions, context)[positions]  # [positions, d_model]
        others = logits()[positions]
        others[:, BLANK] = float("-inf")
        wanted = others.max(-1).values + torch.where(torch.arange(len(hidden)) % 3 == 0, 2.0, -2.0)
        model.lm_head.weight[BLANK] = torch.linalg.lstsq(hidden, wanted[:, None]).solution[:, 0]
    logprobs = logits().log_softmax(-1)
    chosen = logprobs.clone()
    chosen[..., NEVER_PREDICTED] = float("-inf")
    best, labels = chosen.max(-1)
    assert (labels[positions] == BLANK).any() and (labels[positions] != BLANK).any()
    output = generate(model, input_ids, attention_mask)
    for row in range(3):
        n, length = int(lengths[row]), int(output.lengths[row])
        assert output.sequences[row, :length].tolist() == collapse_reference(labels[row, :n].tolist(), BLANK)
        assert int(output.sequences[row, length]) == EOS
        assert output.sequences_scores[row].item() == pytest.approx(best[row, :n].mean().item(), abs=1e-5)
    assert torch.equal(model.generate(input_ids, attention_mask=attention_mask), output.sequences)


@pytest.mark.parametrize("mode", ["mask", "copy"])
def test_batch_of_one_equals_the_padded_batch(mode, source_batch):
    model = ctc_model(mode)
    input_ids, attention_mask = source_batch
    batch = generate(model, input_ids, attention_mask)
    for row in range(3):
        single = generate(model, input_ids[row : row + 1, : int(attention_mask[row].sum())])
        length = int(batch.lengths[row])
        assert single.lengths.tolist() == [length]
        assert single.sequences[0].tolist() == batch.sequences[row, : length + 1].tolist()
        torch.testing.assert_close(single.sequences_scores[0], batch.sequences_scores[row])


def test_max_new_tokens_caps_the_output(source_batch):
    model = ctc_model()
    input_ids, attention_mask = source_batch
    full = generate(model, input_ids, attention_mask)
    assert int(full.lengths.max()) > 2  # the cap below bites
    capped = generate(model, input_ids, attention_mask, max_new_tokens=3)
    assert capped.sequences.shape[1] <= 3
    for row in range(3):
        length = min(int(full.lengths[row]), 2)
        assert int(capped.lengths[row]) == length
        assert capped.sequences[row, :length].tolist() == full.sequences[row, :length].tolist()
        assert int(capped.sequences[row, length]) == EOS
    assert generate(model, input_ids, attention_mask, max_new_tokens=1).sequences.tolist() == [[EOS]] * 3


def test_a_source_of_only_end_of_sentence_gives_an_empty_translation():
    model = ctc_model()
    input_ids = torch.tensor([[EOS, 0, 0], [5, 6, EOS]])
    output = generate(model, input_ids, input_ids != 0)
    assert output.lengths[0].item() == 0 and output.sequences_scores[0].item() == 0.0
    assert output.sequences[0].tolist() == [EOS] + [0] * (output.sequences.shape[1] - 1)
    alone = generate(model, input_ids[1:])
    assert output.sequences[1, : int(alone.lengths[0]) + 1].tolist() == alone.sequences[0].tolist()
    assert model.generate(torch.tensor([[EOS]])).tolist() == [[EOS]]


@pytest.mark.parametrize("return_dict", [False, True])
@pytest.mark.parametrize("part", ["encoder", "decoder", "lm_head"])
def test_nan_weights_raise_instead_of_returning_garbage(part, return_dict, source_batch):
    model = ctc_model()
    modules = {"encoder": model.model.encoder, "decoder": model.model.decoder, "lm_head": model.lm_head}
    with torch.no_grad():
        for parameter in modules[part].parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(NonFiniteScoresError, match="non-finite .*token scores"):
        model.generate(source_batch[0], attention_mask=source_batch[1], return_dict_in_generate=return_dict)


@pytest.mark.parametrize("option", [{"length_beam": 2}, {"num_iterations": 2}, {"decoding_strategy": "mask_predict"}])
def test_options_that_do_not_apply_raise_naming_them(option, source_batch):
    with pytest.raises(ValueError, match=next(iter(option))):
        ctc_model().generate(source_batch[0], attention_mask=source_batch[1], **option)


def test_forced_lengths_do_not_apply(source_batch):
    model = ctc_model()
    input_ids, attention_mask = source_batch
    options = {"decoding_strategy": "greedy", "max_length": 48, "return_dict_in_generate": False}
    with pytest.raises(ValueError, match="forced_lengths"):
        model.nat_method.decode(model, input_ids, attention_mask.bool(), options, forced_lengths=torch.tensor([3] * 3))


def test_no_length_head_one_pass_and_the_timing_pass(source_batch):
    model = ctc_model()
    input_ids, attention_mask = source_batch
    assert isinstance(model.nat_method, CTCMethod) and model.nat_method.heads(model.config) == {}
    assert not hasattr(model.model, "length_predictor")
    assert model.nat_method.is_single_pass(model.nat_method.option_defaults())
    assert model.generation_config.decoding_strategy == "greedy"
    lengths, positions, decoder_input_ids = hand_plan(attention_mask)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                       decoder_attention_mask=positions).logits
        timed = model.nat_method.timing_pass(model, input_ids, attention_mask.bool())
    assert torch.equal(timed[positions], logits.argmax(-1)[positions])


def test_save_and_load_round_trip_gives_the_same_translations(tmp_path, source_batch):
    model = ctc_model("copy", glancing_ratio_start=0.3)
    model.save_pretrained(tmp_path)
    loaded = NATForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.objective == "ctc" and loaded.config.method_options == model.config.method_options
    before, after = generate(model, *source_batch), generate(loaded, *source_batch)
    assert torch.equal(before.sequences, after.sequences)
    assert torch.equal(before.sequences_scores, after.sequences_scores)


# ---------------------------------------------------------------------------------------------- learning


def train_ctc_on(task: str, steps: int, glancing_ratio: float = 0.0, seed: int = 0):
    """A tiny `ctc` model (upsampling ratio 2) trained from scratch on a toy task, and 500 test pairs."""
    model, test, losses = learn_toy_task(task, steps, seed, objective="ctc", max_target_positions=32,
                                         method_options={"upsample_ratio": 2.0,
                                                         "glancing_ratio_start": glancing_ratio})
    assert sum(losses[-50:]) / 50 < losses[0] / 2
    return model, test


def test_ctc_learns_sorting_in_one_pass(record_property):
    model, test = train_ctc_on("sort", steps=300)
    score = evaluate_toy_model(model, test)
    record_property("ctc_sort_exact_match", score.exact_match)
    print(f"ctc sort: exact match {score.exact_match:.1%}, length accuracy {score.length_accuracy:.1%}")
    assert score.exact_match >= 0.95


def test_an_evaluation_loss_does_not_glance():
    """In eval mode (validation loss) the loss is the one-pass loss that decoding matches: one decoder pass."""
    model = ctc_model("mask", glancing_ratio_start=1.0)
    input_ids = torch.tensor([[5, 6, 7, 8, 1]])
    target = torch.tensor([[12, 13, 14]])
    plain = ctc_model("mask")
    with torch.no_grad():
        glancing_off = model(input_ids=input_ids, labels=target).loss
        reference = plain(input_ids=input_ids, labels=target).loss
    torch.testing.assert_close(glancing_off, reference)
