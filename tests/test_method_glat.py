"""The `glat` method (Qian et al., 2021, "Glancing Transformer"): the glancing schedule and its validation, the
choice of revealed positions, the two-pass loss, one-pass decoding, and learning the toy tasks in one pass."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from nat_hf import NATConfig, NATForConditionalGeneration
from nat_hf.method_base import masked_token_loss, predict_tokens, special_token_ids
from nat_hf.method_glat import GlancingOptions, GLATMethod, GLATTrainingOptions, glancing_counts, glancing_reveal
from nat_hf.methods import METHODS
from nat_hf.toy import evaluate_toy_model, learn_toy_task
from tests.conftest import TINY


def glat_model(decoder_input_mode: str = "mask", seed: int = 0, **method_options) -> NATForConditionalGeneration:
    config = NATConfig(**TINY, objective="glat", decoder_input_mode=decoder_input_mode, method_options=method_options)
    torch.manual_seed(seed)
    return NATForConditionalGeneration(config)


def batch_context(model, input_ids: torch.Tensor):
    attention_mask = input_ids != model.config.pad_token_id
    hidden = model.model.encode(input_ids, attention_mask)
    return model.model.make_context(input_ids, attention_mask, hidden)


# ------------------------------------------------------------------------------------------- the schedule
def test_glancing_ratio_decays_linearly_then_stays_at_the_end_ratio():
    options = GlancingOptions(glancing_ratio_start=0.5, glancing_ratio_end=0.1, glancing_anneal_steps=100)
    assert options.glancing_ratio(0) == 0.5
    assert options.glancing_ratio(50) == pytest.approx(0.3)
    assert options.glancing_ratio(25) == pytest.approx(0.4)
    assert options.glancing_ratio(100) == pytest.approx(0.1)
    assert options.glancing_ratio(10_000) == pytest.approx(0.1)
    assert options.glancing_ratio(None) == 0.5  # a caller that counts no steps (transformers' Trainer)


def test_glancing_ratio_is_constant_without_an_end_ratio_or_anneal_steps():
    assert GlancingOptions(0.4, None, 100).glancing_ratio(60) == 0.4
    assert GlancingOptions(0.4, 0.1, 0).glancing_ratio(60) == 0.4
    assert GlancingOptions().glancing_ratio(5) == 0.0  # the shared default: glancing off


@pytest.mark.parametrize("options, name", [
    ({"glancing_ratio_start": 1.5}, "glancing_ratio_start"),
    ({"glancing_ratio_start": -0.1}, "glancing_ratio_start"),
    ({"glancing_ratio_start": True}, "glancing_ratio_start"),
    ({"glancing_ratio_start": "0.5"}, "glancing_ratio_start"),
    ({"glancing_ratio_start": float("nan")}, "glancing_ratio_start"),
    ({"glancing_ratio_end": 2.0}, "glancing_ratio_end"),
    ({"glancing_ratio_end": False}, "glancing_ratio_end"),
    ({"glancing_anneal_steps": -1}, "glancing_anneal_steps"),
    ({"glancing_anneal_steps": True}, "glancing_anneal_steps"),
    ({"glancing_anneal_steps": 2.5}, "glancing_anneal_steps"),
])
def test_bad_glancing_options_raise_naming_the_option(options, name):
    with pytest.raises(ValueError, match=name):
        NATConfig(**TINY, objective="glat", method_options=options)


def test_numpy_numbers_are_accepted_and_stored_as_python_numbers():
    import numpy as np

    config = NATConfig(**TINY, objective="glat", method_options={"glancing_ratio_start": np.float32(0.25),
                                                                 "glancing_anneal_steps": np.int64(7)})
    assert config.method_options["glancing_ratio_start"] == 0.25
    assert type(config.method_options["glancing_ratio_start"]) is float
    assert type(config.method_options["glancing_anneal_steps"]) is int


def test_an_unknown_method_option_raises_naming_it():
    with pytest.raises(ValueError, match="glancing_ratio"):  # lists the method's options
        NATConfig(**TINY, objective="glat", method_options={"glancing_rate": 0.5})
    with pytest.raises(ValueError, match="glancing_rate"):
        NATConfig(**TINY, objective="glat", method_options={"glancing_rate": 0.5})


def test_method_options_are_filled_with_defaults_and_survive_save_and_load(tmp_path):
    assert NATConfig(**TINY, objective="glat").method_options == {
        "glancing_ratio_start": 0.5, "glancing_ratio_end": 0.3, "glancing_anneal_steps": 20000,
    }
    model = glat_model(glancing_ratio_start=1, glancing_anneal_steps=40)
    expected = {"glancing_ratio_start": 1.0, "glancing_ratio_end": 0.3, "glancing_anneal_steps": 40}
    assert model.config.method_options == expected
    assert isinstance(model.config.method_options["glancing_ratio_start"], float)  # normalised
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["method_options"] == expected
    loaded = NATForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.method_options == expected
    options = METHODS["glat"].training_options(loaded.config)
    assert isinstance(options, GLATTrainingOptions)
    assert options.glancing_ratio(20) == pytest.approx(0.65)


# ------------------------------------------------------------------------------------ revealed positions
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.15, 0.3, 0.5, 0.7, 0.85, 1.0])
def test_glancing_counts_round_ratio_times_mismatches_half_up(ratio):
    mismatches = torch.arange(40)[None, :] < torch.arange(41)[:, None]  # row d has d mismatches, d = 0..40
    expected = [math.floor(ratio * d + 0.5) for d in range(41)]
    assert glancing_counts(mismatches, ratio).tolist() == expected


def test_glancing_reveal_chooses_the_counted_number_among_the_candidates_only():
    torch.manual_seed(0)
    candidates = torch.tensor([[True] * 8, [True] * 5 + [False] * 3, [True] * 2 + [False] * 6, [False] * 8])
    mismatches = torch.tensor([
        [True, False, True, True, False, True, False, False],  # 4 wrong
        [True] * 5 + [False] * 3,  # all 5 wrong
        [True] * 8,  # wrong beyond the candidates too: only the 2 candidates count
        [True] * 8,  # no candidate: nothing revealed
    ])
    chosen_ever = torch.zeros_like(candidates)
    for ratio, counts in ((0.5, [2, 3, 1, 0]), (1.0, [4, 5, 2, 0]), (0.0, [0, 0, 0, 0])):
        for _ in range(50):
            revealed = glancing_reveal(mismatches, candidates, ratio)
            assert not (revealed & ~candidates).any()
            assert revealed.sum(-1).tolist() == counts
            chosen_ever |= revealed
    assert torch.equal(chosen_ever, candidates)  # any candidate, wrong or right, may be revealed


def test_glancing_reveal_never_takes_more_than_a_row_has():
    candidates = torch.tensor([[True, True, False, False]])
    mismatches = torch.tensor([[True, True, True, True]])
    assert glancing_reveal(mismatches, candidates, 1.0).tolist() == [[True, True, False, False]]


# ------------------------------------------------------------------------------------------- the loss
def test_with_ratio_zero_the_loss_is_vanillas():
    model = glat_model(glancing_ratio_start=0.0).train()
    input_ids = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]])
    context = batch_context(model, input_ids)
    target = torch.tensor([[10, 11, 12, 13, 14], [15, 16, 0, 0, 0]])
    torch.manual_seed(3)
    glat_logits, glat_loss = METHODS["glat"].token_loss(model, context, target, target != 0, step=0)
    torch.manual_seed(3)
    vanilla_logits, vanilla_loss = METHODS["vanilla"].token_loss(model, context, target, target != 0)
    assert torch.equal(glat_logits, vanilla_logits)
    assert torch.equal(glat_loss, vanilla_loss)


def test_in_eval_mode_the_loss_is_the_one_pass_loss_without_glancing():
    model = glat_model(glancing_ratio_start=1.0).eval()
    input_ids = torch.tensor([[5, 6, 7, 1]])
    context = batch_context(model, input_ids)
    target = torch.tensor([[10, 11, 12, 13]])
    _, glat_loss = METHODS["glat"].token_loss(model, context, target, target != 0)
    _, vanilla_loss = METHODS["vanilla"].token_loss(model, context, target, target != 0)
    assert torch.equal(glat_loss, vanilla_loss)


def test_revealed_positions_are_inputs_of_the_second_pass_and_left_out_of_the_loss():
    model = glat_model(glancing_ratio_start=1.0, glancing_ratio_end=1.0).train()
    config = model.config
    input_ids = torch.tensor([[5, 6, 7, 8, 1], [9, 10, 11, 1, 0]])
    context = batch_context(model, input_ids)
    target_mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    all_masks = torch.full(target_mask.shape, config.mask_token_id).masked_fill(~target_mask, config.pad_token_id)
    with torch.no_grad():  # the first pass reads only <mask> inputs: its prediction does not depend on the target
        first, _ = predict_tokens(model.model.decode(all_masks, target_mask, context), model.lm_head,
                                  special_token_ids(config), with_scores=False)
    # a target the untrained model gets right except at 3 (row 0) and 2 (row 1) positions
    wrong = torch.tensor([[True, False, True, False, False, True], [False, True, True, False, False, False]])
    target = torch.where(wrong, 5 + (first - 5 + 1) % 12, first).masked_fill(~target_mask, config.pad_token_id)
    assert torch.equal((target != first) & target_mask, wrong)

    torch.manual_seed(11)
    revealed = glancing_reveal(wrong, target_mask, 1.0)  # the same random draw as the loss's
    torch.manual_seed(11)
    logits, loss = METHODS["glat"].token_loss(model, context, target, target_mask, step=0)

    assert revealed.sum(-1).tolist() == [3, 2]  # ratio 1: as many hints as wrong positions
    second_inputs = torch.where(revealed, target, all_masks)
    expected_logits = model.decoder_logits(second_inputs, target_mask, context)
    torch.testing.assert_close(logits, expected_logits)
    counted = target_mask & ~revealed
    expected_loss = F.cross_entropy(expected_logits[counted], target[counted], label_smoothing=config.label_smoothing)
    torch.testing.assert_close(loss, expected_loss)
    everywhere = masked_token_loss(expected_logits, target, target_mask, config.label_smoothing)
    assert not torch.isclose(loss, everywhere)  # leaving the revealed positions out matters


def test_copy_mode_second_pass_reads_target_embeddings_at_revealed_positions():
    model = glat_model("copy", glancing_ratio_start=0.5, glancing_ratio_end=0.5).train()
    backbone = model.model
    input_ids = torch.tensor([[5, 6, 7, 8, 1], [9, 10, 11, 1, 0]])
    context = batch_context(model, input_ids)
    target = torch.tensor([[12, 13, 14, 15, 16, 12], [13, 14, 15, 16, 0, 0]])
    target_mask = target != 0
    seen = []
    hook = backbone.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        torch.manual_seed(0)
        METHODS["glat"].token_loss(model, context, target, target_mask, step=0)
    finally:
        hook.remove()
    assert len(seen) == 2  # the no-grad first pass, then the trained pass
    all_masks = torch.full(target.shape, model.config.mask_token_id)
    copied = backbone.decoder_inputs_embeds(all_masks, target_mask, context)  # copied source embeddings
    torch.testing.assert_close(seen[0], copied)
    with torch.no_grad():
        first, _ = predict_tokens(model.model.decode(all_masks, target_mask, context), model.lm_head,
                                  special_token_ids(model.config), with_scores=False)
    torch.manual_seed(0)  # the loss's random draw again
    revealed = glancing_reveal((first != target) & target_mask, target_mask, 0.5)
    assert revealed.any() and not torch.equal(revealed, target_mask)
    tokens = backbone.shared(target) * backbone.embed_scale
    torch.testing.assert_close(seen[1][revealed], tokens[revealed])
    torch.testing.assert_close(seen[1][~revealed], copied[~revealed])


def test_the_schedule_follows_the_step_the_forward_pass_gets():
    """At step 0 (ratio 1) every wrong position of an untrained model is revealed, so the loss counts few
    positions; past the anneal (ratio 0) the loss equals the one-pass loss."""
    model = glat_model(glancing_ratio_start=1.0, glancing_ratio_end=0.0, glancing_anneal_steps=10).train()
    input_ids = torch.tensor([[5, 6, 7, 8, 1]])
    labels = torch.tensor([[9, 10, 11, 12, 1]])
    late = model(input_ids=input_ids, labels=labels, step=10).token_loss
    context = batch_context(model, input_ids)
    _, one_pass = METHODS["vanilla"].token_loss(model, context, labels[:, :4], labels[:, :4] != 0)
    assert torch.equal(late, one_pass)
    torch.manual_seed(0)
    early = model(input_ids=input_ids, labels=labels, step=0).token_loss
    assert not torch.equal(early, one_pass)


# ------------------------------------------------------------------------------------------- decoding
def test_glat_decodes_in_one_pass_by_default_and_a_copy_model_generates_bare(source_batch):
    model = glat_model("copy").eval()
    assert model.generation_config.num_iterations == 1
    assert model.generation_config.length_beam == 1
    assert METHODS["glat"].is_single_pass(METHODS["glat"].option_defaults())
    input_ids, attention_mask = source_batch
    bare = model.generate(input_ids, attention_mask=attention_mask)
    explicit = model.generate(input_ids, attention_mask=attention_mask, num_iterations=1, length_beam=1)
    assert torch.equal(bare, explicit)
    assert (bare == model.config.eos_token_id).sum(-1).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="num_iterations"):
        model.generate(input_ids, attention_mask=attention_mask, num_iterations=2)


def test_glat_is_a_vanilla_method_with_one_pass_options():
    assert isinstance(METHODS["glat"], GLATMethod)
    assert METHODS["glat"].option_defaults() == {"num_iterations": 1, "length_beam": 1,
                                                 "decoding_strategy": "mask_predict"}


@pytest.mark.parametrize("mode", ["mask", "copy"])
def test_a_sentence_alone_decodes_as_in_a_padded_batch(mode, source_batch):
    model = glat_model(mode, seed=1).eval()
    input_ids, attention_mask = source_batch
    batched = model.generate(input_ids, attention_mask=attention_mask)
    eos = model.config.eos_token_id

    def strip(row: list[int]) -> list[int]:
        return row[: row.index(eos)]

    for row in range(input_ids.shape[0]):
        length = int(attention_mask[row].sum())
        alone = model.generate(input_ids[row : row + 1, :length])
        assert len(strip(alone[0].tolist())) >= 1
        assert strip(alone[0].tolist()) == strip(batched[row].tolist())


# ------------------------------------------------------------------------------------------- learning
def train_glat_on(task: str, steps: int, method_options: dict, seed: int = 0):
    """A tiny glat model (tests/test_learning.py's size) trained with the toy loop, which passes the step."""
    model, test, losses = learn_toy_task(task, steps, seed, objective="glat", decoder_input_mode="mask",
                                         method_options=method_options)
    assert sum(losses[-50:]) / 50 < losses[0] / 2
    return model, test


def test_glat_learns_sorting_in_one_pass(record_property):
    model, test = train_glat_on("sort", 200, {"glancing_ratio_start": 0.5, "glancing_ratio_end": 0.1,
                                              "glancing_anneal_steps": 200})
    score = evaluate_toy_model(model, test, num_iterations=1, length_beam=1)
    record_property("glat_sort_exact_match_1_pass", score.exact_match)
    print(f"glat sort: exact match {score.exact_match:.1%} in one pass; length accuracy {score.length_accuracy:.1%}")
    assert score.exact_match >= 0.95
