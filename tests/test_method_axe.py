"""`axe` (aligned cross-entropy): the alignment cost against brute-force enumeration of every monotonic alignment on
tiny inputs; the method (config rules, options, decoding with blanks removed, batch of one = padded batch); a toy
learning check."""

import pytest
import torch
import torch.nn.functional as F

from nat_hf import NATConfig, NATForConditionalGeneration
from nat_hf.method_axe import axe_alignment_costs, remove_blanks
from nat_hf.toy import evaluate_toy_model, learn_toy_task

from .conftest import TINY

BLANK, MASK, EOS, PAD = TINY["vocab_size"] - 1, 3, 1, 0
AXE = {**TINY, "objective": "axe", "blank_token_id": BLANK}


def brute_force_cost(log_probs, positions, target, blank, skip_target_weight, label_smoothing):
    """min over every sequence of moves (align, skip position, skip target) from (0, 0) to (n, m), summed costs;
    the definition, by recursion over all paths."""
    best = float("inf")

    def walk(i, j, cost):
        nonlocal best
        if i == len(target) and j == positions:
            best = min(best, cost)
            return
        if i < len(target) and j < positions:
            align = -(1 - label_smoothing) * log_probs[j, target[i]] - label_smoothing * log_probs[j].mean()
            walk(i + 1, j + 1, cost + float(align))
        if j < positions:
            walk(i, j + 1, cost - float(log_probs[j, blank]))
        if i < len(target):
            walk(i + 1, j, cost - skip_target_weight * float(log_probs[max(j, 1) - 1, target[i]]))

    walk(0, 0, 0.0)
    return best


@pytest.mark.parametrize("shape", [(3, 4, 3, 6), (2, 5, 5, 7), (4, 3, 4, 5), (1, 6, 2, 4)])
@pytest.mark.parametrize("skip_target_weight,label_smoothing", [(1.0, 0.0), (2.5, 0.1), (0.5, 0.0)])
def test_alignment_costs_equal_brute_force_over_every_alignment(shape, skip_target_weight, label_smoothing):
    """Padded batches: each row has its own number of positions and target tokens (n > m, n < m, n = 0), and the
    padding holds garbage that must not count."""
    batch, positions, tokens, vocab = shape
    generator = torch.Generator().manual_seed(sum(shape))
    log_probs = (torch.randn(batch, positions, vocab, generator=generator, dtype=torch.float64) * 2).log_softmax(-1)
    target = torch.randint(0, vocab, (batch, tokens), generator=generator)
    lengths = torch.randint(1, positions + 1, (batch,), generator=generator)
    target_lengths = torch.randint(0, tokens + 1, (batch,), generator=generator)
    target_lengths[0] = tokens  # the full width appears at least once
    blank = 0
    costs = axe_alignment_costs(log_probs, lengths, target, target_lengths, blank, skip_target_weight, label_smoothing)
    expected = [brute_force_cost(log_probs[row], int(lengths[row]), target[row, : int(target_lengths[row])].tolist(),
                                 blank, skip_target_weight, label_smoothing) for row in range(batch)]
    torch.testing.assert_close(costs, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-9)
    # each row alone (no padding) gives the same cost
    for row in range(batch):
        alone = axe_alignment_costs(log_probs[row : row + 1, : int(lengths[row])], lengths[row : row + 1],
                                    target[row : row + 1, : int(target_lengths[row])], target_lengths[row : row + 1],
                                    blank, skip_target_weight, label_smoothing)
        torch.testing.assert_close(alone[0], costs[row], rtol=0, atol=1e-9)


def confident(predicted: list[int], vocab: int, p: float = 0.97) -> torch.Tensor:
    """`[1, len(predicted), vocab]` log-probabilities putting `p` on each predicted id."""
    probs = torch.full((len(predicted), vocab), (1 - p) / (vocab - 1), dtype=torch.float64)
    probs[torch.arange(len(predicted)), predicted] = p
    return probs.log()[None]


def test_a_shifted_prediction_costs_one_skip_where_cross_entropy_pays_every_position():
    """Reference `a b c d`; the positions say `_ a b c` (one step late, a blank first). Cross-entropy pays a
    confident mistake at all 4 positions; AXE skips the blank position and the last target token: one mistake."""
    vocab, blank = 8, 0
    target = torch.tensor([[4, 5, 6, 7]])
    log_probs = confident([blank, 4, 5, 6], vocab)
    lengths = torch.tensor([4])
    cost = axe_alignment_costs(log_probs, lengths, target, lengths, blank)
    cross_entropy = F.nll_loss(log_probs[0], target[0], reduction="sum")
    one_mistake = -log_probs[0, 0, 4]  # -log of a probability the model did not predict
    sure = -log_probs[0, 1, 4]  # -log 0.97
    assert cost.item() == pytest.approx(one_mistake.item() + 4 * sure.item(), abs=1e-9)  # 1 blank + 3 aligned
    assert cross_entropy.item() > 3.9 * one_mistake.item()
    assert cost.item() < cross_entropy.item() / 3


def test_the_gradient_reaches_only_the_best_alignments_moves():
    """Positions `_ a b c` against reference `a b c d`: the best alignment skips position 1 (blank) and scores the
    skipped `d` at position 4: the gradient touches log P_1(blank), log P_j(a|b|c) and log P_4(d) and nothing else."""
    vocab, blank = 8, 0
    log_probs = confident([blank, 4, 5, 6], vocab).requires_grad_()
    target = torch.tensor([[4, 5, 6, 7]])
    axe_alignment_costs(log_probs, torch.tensor([4]), target, torch.tensor([4]), blank).sum().backward()
    touched = {(j, v) for j, v in (log_probs.grad[0] != 0).nonzero().tolist()}
    assert touched == {(0, blank), (1, 4), (2, 5), (3, 6), (3, 7)}


def test_rows_with_tokens_but_no_positions_and_bad_shapes_raise():
    log_probs, target = torch.zeros(2, 3, 5), torch.ones(2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="needs at least one decoder position"):
        axe_alignment_costs(log_probs, torch.tensor([0, 3]), target, torch.tensor([1, 2]), 0)
    with pytest.raises(ValueError, match="lengths must be <= 3"):
        axe_alignment_costs(log_probs, torch.tensor([4, 3]), target, torch.tensor([1, 2]), 0)
    with pytest.raises(ValueError, match=r"target \[batch, tokens\]"):
        axe_alignment_costs(log_probs, torch.tensor([3, 3]), torch.ones(2, dtype=torch.long), torch.tensor([1, 2]), 0)


def test_remove_blanks_keeps_order_and_pads():
    tokens = torch.tensor([[9, 5, 9, 6, 7], [9, 9, 9, 9, 4], [5, 5, 6, 0, 0]])
    out, lengths = remove_blanks(tokens, torch.tensor([5, 4, 3]), blank=9, pad=-1)
    assert lengths.tolist() == [3, 0, 3]
    assert out.tolist() == [[5, 6, 7], [-1, -1, -1], [5, 5, 6]]  # repeats stay (AXE merges nothing)


def axe_model(mode: str = "mask", **method_options) -> NATForConditionalGeneration:
    torch.manual_seed(0)
    return NATForConditionalGeneration(NATConfig(**AXE, decoder_input_mode=mode,
                                                 method_options=method_options)).eval()


def varied_axe_model(mode: str, input_ids, attention_mask) -> NATForConditionalGeneration:
    """A tiny axe model with large random weights (varied tokens), lengths near the source length's, and the
    blank's output row a copy (x 1.01) of the first token it predicts: the blank then wins where that token did
    (every position of the first source here) and not elsewhere."""
    model = axe_model(mode)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, 1.0)
        offset = TINY["max_length_offset"]
        model.model.length_predictor.bias[offset - 2 : offset + 2] += 5.0
        first = int(model.generate(input_ids, attention_mask=attention_mask, length_beam=1)[0, 0])
        model.lm_head.weight[BLANK] = model.lm_head.weight[first] * 1.01
    return model


def test_config_requires_a_blank_token_and_a_positive_skip_weight():
    with pytest.raises(ValueError, match="blank_token_id"):
        NATConfig(**{**AXE, "blank_token_id": None})
    for bad in (0, -1.0, True, "1"):
        with pytest.raises(ValueError, match="skip_target_weight"):
            NATConfig(**AXE, method_options={"skip_target_weight": bad})
    assert NATConfig(**AXE, method_options={"skip_target_weight": 2}).method_options == {"skip_target_weight": 2.0}


def test_options_of_other_methods_raise_naming_them(source_batch):
    model = axe_model()
    input_ids, attention_mask = source_batch
    for option in ({"num_iterations": 2}, {"decoding_strategy": "viterbi"}):
        with pytest.raises(ValueError, match=list(option)[0]):
            model.generate(input_ids, attention_mask=attention_mask, **option)
    with pytest.raises(ValueError, match="length_beam"):
        model.generate(input_ids, attention_mask=attention_mask, length_beam=10_000)


@pytest.mark.parametrize("mode", ["mask", "copy"])
@pytest.mark.parametrize("length_beam", [1, 3])
def test_decode_is_the_argmax_with_the_blank_allowed_then_blanks_removed(mode, length_beam, source_batch):
    """By hand: the length candidates, one pass from `<mask>` inputs at each, the best token per position (special
    tokens but the blank excluded), the candidate with the best mean log-probability, its blanks removed; the blank
    wins at some positions and not at others."""
    input_ids, attention_mask = source_batch
    model = varied_axe_model(mode, input_ids, attention_mask)
    with torch.no_grad():
        hidden = model.model.encode(input_ids, attention_mask.bool())
        length_logits = model.nat_method.length_logits(model.model, hidden, attention_mask.bool())
        candidates = input_ids.ne(0).sum(-1)[:, None] + length_logits.topk(length_beam, -1).indices - TINY[
            "max_length_offset"]
        expected, saw_blank, saw_token = [], False, False
        for row in range(3):
            best = None
            for length in candidates[row].clamp(min=1).tolist():
                one = model.model.make_context(input_ids[row : row + 1], attention_mask[row : row + 1].bool(),
                                               hidden[row : row + 1])
                logits = model.nat_method.one_pass_logits(model, one, torch.ones(1, length, dtype=torch.bool))[0]
                log_probs = logits.float().log_softmax(-1)
                log_probs[:, [PAD, EOS, MASK]] = float("-inf")
                scores, tokens = log_probs.max(-1)
                if best is None or scores.mean() > best[0]:
                    best = (scores.mean(), tokens.tolist())
                saw_blank |= BLANK in tokens.tolist()
                saw_token |= any(token != BLANK for token in tokens.tolist())
            expected.append([token for token in best[1] if token != BLANK])
    assert saw_blank and saw_token
    output = model.generate(input_ids, attention_mask=attention_mask, length_beam=length_beam,
                            return_dict_in_generate=True)
    for row in range(3):
        length = int(output.lengths[row])
        assert output.sequences[row, :length].tolist() == expected[row]
        assert int(output.sequences[row, length]) == EOS


@pytest.mark.parametrize("mode", ["mask", "copy"])
def test_batch_of_one_equals_the_padded_batch(mode, source_batch):
    input_ids, attention_mask = source_batch
    model = varied_axe_model(mode, input_ids, attention_mask)
    batch = model.generate(input_ids, attention_mask=attention_mask, length_beam=2, return_dict_in_generate=True)
    for row in range(3):
        single = model.generate(input_ids[row : row + 1, : int(attention_mask[row].sum())], length_beam=2,
                                return_dict_in_generate=True)
        length = int(batch.lengths[row])
        assert single.lengths.tolist() == [length]
        assert single.sequences[0].tolist() == batch.sequences[row, : length + 1].tolist()
        torch.testing.assert_close(single.sequences_scores[0], batch.sequences_scores[row])


def test_the_loss_is_the_alignment_cost_per_target_token(source_batch):
    """`forward(labels=...)`: token term = sum of the rows' AXE costs at the reference length / target tokens."""
    model = axe_model(skip_target_weight=1.5)
    input_ids, attention_mask = source_batch
    labels = torch.tensor([[20, 21, 22, EOS], [23, EOS, -100, -100], [24, 25, 26, EOS]])
    with torch.no_grad():
        output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        target = torch.tensor([[20, 21, 22], [23, PAD, PAD], [24, 25, 26]])  # what forward makes of the labels
        target_mask = target != PAD
        decoder_input_ids = target.masked_fill(target_mask, MASK)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                       decoder_attention_mask=target_mask).logits
        lengths = target_mask.sum(-1)
        costs = axe_alignment_costs(logits.float().log_softmax(-1), lengths, target, lengths, BLANK, 1.5,
                                    model.config.label_smoothing)
    torch.testing.assert_close(output.token_loss, costs.sum() / lengths.sum())


def test_axe_learns_sorting_in_one_pass(record_property):
    model, test, losses = learn_toy_task("sort", 200, 0, objective="axe")
    assert sum(losses[-50:]) / 50 < losses[0] / 2
    score = evaluate_toy_model(model, test, length_beam=1)
    record_property("axe_sort_exact_match", score.exact_match)
    print(f"axe sort: exact match {score.exact_match:.1%} in one pass; length accuracy {score.length_accuracy:.1%}")
    assert score.exact_match >= 0.95
