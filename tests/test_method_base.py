import torch

from nat_hf import NATConfig, method_cmlm
from nat_hf.method_base import (
    DecodingState,
    best_candidates,
    finish_sequences,
    length_candidates,
    lowest_scoring_positions,
)
from nat_hf.method_cmlm import mask_predict, refine

from .conftest import TINY


def test_lowest_scoring_positions_on_a_hand_built_case():
    scores = torch.tensor([
        [-0.1, -2.0, -0.5, -3.0, 0.0],
        [-1.0, -1.0, -1.0, -0.2, -9.0],  # ties: leftmost first; position 4 is padding
    ])
    valid = torch.tensor([[True] * 5, [True, True, True, True, False]])
    chosen = lowest_scoring_positions(scores, valid, torch.tensor([2, 2]))
    assert chosen.tolist() == [
        [False, True, False, True, False],
        [True, True, False, False, False],
    ]
    assert not lowest_scoring_positions(scores, valid, torch.tensor([0, 0])).any()
    assert lowest_scoring_positions(scores, valid, torch.tensor([9, 9])).equal(valid)


def test_mask_predict_remasks_the_scheduled_number_of_lowest_probability_tokens(tiny_model, monkeypatch):
    """Lengths 5, 3 and 1 over T=4 iterations: pass t re-masks floor(L * (T - t) / T) tokens, the lowest-scoring
    ones of the previous pass."""
    recorded = []
    def recording_refine(model, state, remask, *args, **kwargs):
        recorded.append((state.scores.clone(), remask.clone()))
        return refine(model, state, remask, *args, **kwargs)

    monkeypatch.setattr(method_cmlm, "refine", recording_refine)
    input_ids = torch.tensor([[5, 6, 7, 8, 1], [9, 10, 1, 0, 0], [11, 1, 0, 0, 0]])
    encoder_states = tiny_model.model.encode(input_ids, input_ids != 0)
    context = tiny_model.model.make_context(input_ids, input_ids != 0, encoder_states, True)
    lengths = torch.tensor([5, 3, 1])
    with torch.no_grad():
        state = mask_predict(tiny_model, context, lengths, num_iterations=4)
    assert state.step == 4
    counts = [remask.sum(-1).tolist() for _, remask in recorded]
    assert counts == [[5, 3, 1], [3, 2, 0], [2, 1, 0], [1, 0, 0]]
    valid = state.valid
    for previous_scores, remask in recorded[1:]:
        expected = lowest_scoring_positions(previous_scores, valid, remask.sum(-1))
        assert torch.equal(remask, expected)
    assert (state.scores[valid] < 0).all() and (state.scores[~valid] == 0).all()


def test_length_candidates_offset_and_absolute():
    config = NATConfig(**TINY)  # offset mode, max_length_offset 6: class c means offset c - 6
    logits = torch.full((3, config.num_length_classes), -10.0)
    logits[0, 6], logits[0, 7] = 5.0, 4.0  # offsets 0, +1
    logits[1, 0], logits[1, 1] = 5.0, 4.0  # offsets -6, -5 on a 3-token source: clamp to 1
    logits[2, 6] = 5.0
    source_lengths = torch.tensor([4, 3, 1])
    empty = torch.tensor([False, False, True])
    lengths = length_candidates(logits, source_lengths, empty, config, length_beam=2, max_length=4)
    assert lengths[0].tolist() == [4, 4]  # 4 + 1 is capped at max_length 4
    assert lengths[1].tolist() == [1, 1]
    assert lengths[2].tolist() == [0, 0]  # an empty source gets an empty translation

    absolute = NATConfig(**{**TINY, "length_prediction_mode": "absolute"})
    logits = torch.zeros(1, absolute.num_length_classes)
    logits[0, 7], logits[0, 2] = 3.0, 2.0
    assert length_candidates(logits, torch.tensor([20]), torch.tensor([False]), absolute, 2, 24).tolist() == [[7, 2]]


def test_best_candidates_takes_the_highest_mean_log_probability():
    state = DecodingState(
        tokens=torch.tensor([[5, 6, 0], [7, 8, 9], [10, 0, 0], [11, 12, 0]]),
        scores=torch.tensor([[-1.0, -1.0, 0.0], [-0.5, -0.5, -0.8], [-2.0, 0.0, 0.0], [-0.1, -0.3, 0.0]]),
        lengths=torch.tensor([2, 3, 1, 2]),
    )
    tokens, lengths, scores = best_candidates(state, length_beam=2)
    assert tokens.tolist() == [[7, 8, 9], [11, 12, 0]]
    assert lengths.tolist() == [3, 2]
    torch.testing.assert_close(scores, torch.tensor([-0.6, -0.2]))


def test_finish_sequences_closes_with_eos_and_pads():
    tokens = torch.tensor([[5, 6, 7], [8, 0, 0], [0, 0, 0]])
    finished = finish_sequences(tokens, torch.tensor([3, 1, 0]), eos_token_id=1, pad_token_id=0)
    assert finished.tolist() == [[5, 6, 7, 1], [8, 1, 0, 0], [1, 0, 0, 0]]


def test_projecting_only_the_masked_positions_changes_nothing(tiny_model):
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 10, 1], [11, 12, 1, 0, 0, 0, 0]])
    attention_mask = input_ids != 0
    context = tiny_model.model.make_context(input_ids, attention_mask,
                                            tiny_model.model.encode(input_ids, attention_mask), True)
    lengths = torch.tensor([6, 2])
    target_len = 6
    decoder_mask = tiny_model.prepare_decoder_mask(lengths, target_len, context)
    valid = torch.arange(target_len)[None, :] < lengths[:, None]
    with torch.no_grad():
        start = DecodingState(torch.full((2, target_len), 3).masked_fill(~valid, 0), torch.zeros(2, target_len),
                              lengths)
        state = refine(tiny_model, start, valid, decoder_mask, context)
        remask = lowest_scoring_positions(state.scores, valid, torch.tensor([3, 1]))
        full = refine(tiny_model, state, remask, decoder_mask, context)
        restricted = refine(tiny_model, state, remask, decoder_mask, context, max_masked=3)
    assert torch.equal(full.tokens, restricted.tokens)
    torch.testing.assert_close(full.scores, restricted.scores)


def test_a_zero_length_cap_gives_empty_candidates():
    """max_length 0 (generate with max_new_tokens=1): only end-of-sentence fits, every candidate is empty."""
    config = NATConfig(**TINY)
    logits = torch.randn(2, config.num_length_classes)
    lengths = length_candidates(logits, torch.tensor([5, 3]), torch.tensor([False, True]), config, 3, max_length=0)
    assert lengths.tolist() == [[0, 0, 0], [0, 0, 0]]


def test_empty_hypotheses_stay_empty_through_refinement_and_selection(tiny_model):
    """Rows of length 0 only: mask_predict leaves them padding with score 0, the choice among candidates and the
    closing end-of-sentence give the empty translation."""
    input_ids = torch.tensor([[5, 6, 7, 1], [9, 1, 0, 0]])
    encoder_states = tiny_model.model.encode(input_ids, input_ids != 0)
    context = tiny_model.model.make_context(input_ids, input_ids != 0, encoder_states, True).repeat_rows(2)
    with torch.no_grad():
        state = mask_predict(tiny_model, context, torch.zeros(4, dtype=torch.long), num_iterations=3)
    assert (state.tokens == tiny_model.config.pad_token_id).all() and (state.scores == 0).all()
    tokens, lengths, scores = best_candidates(state, length_beam=2)
    assert lengths.tolist() == [0, 0] and scores.tolist() == [0.0, 0.0]
    assert finish_sequences(tokens, lengths, eos_token_id=1, pad_token_id=0).tolist() == [[1], [1]]
