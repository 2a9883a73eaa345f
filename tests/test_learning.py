"""Learning check: a tiny CMLM model trained from scratch on generated toy tasks must really learn them.

About a minute on two CPU cores: two models of 200k parameters, 800 steps of 64 sequences each.
"""

import pytest

from nat_hf import NATForConditionalGeneration
from nat_hf.toy import evaluate_toy_model, learn_toy_task


def train_on(task: str, seed: int = 0) -> tuple[NATForConditionalGeneration, list]:
    model, test, losses = learn_toy_task(task, steps=800, seed=seed)
    assert sum(losses[-50:]) / 50 < losses[0] / 2
    return model, test


def test_cmlm_learns_sorting_with_mask_predict(record_property):
    model, test = train_on("sort")
    one_pass = evaluate_toy_model(model, test, num_iterations=1, length_beam=1)
    mask_predict = evaluate_toy_model(model, test, num_iterations=4, length_beam=1)
    record_property("sort_exact_match_1_iteration", one_pass.exact_match)
    record_property("sort_exact_match_4_iterations", mask_predict.exact_match)
    print(f"sort: exact match {one_pass.exact_match:.1%} (1 iteration), {mask_predict.exact_match:.1%} "
          f"(4 iterations); length accuracy {mask_predict.length_accuracy:.1%}")
    assert mask_predict.exact_match >= 0.90
    assert mask_predict.length_accuracy >= 0.95


@pytest.mark.parametrize("task", ["sort_up_or_down"])
def test_iterating_is_not_worse_on_a_two_mode_task(task, record_property):
    """Each source has two correct outputs (ascending or descending order). One pass predicts each position
    independently and mixes the modes; refinement conditions on its own earlier choices."""
    model, test = train_on(task)
    scores = {n: evaluate_toy_model(model, test, num_iterations=n, length_beam=1) for n in (1, 4, 10)}
    for n, score in scores.items():
        record_property(f"{task}_exact_match_{n}_iterations", score.exact_match)
    print(f"{task}: exact match " + ", ".join(f"{s.exact_match:.1%} ({n} it.)" for n, s in scores.items()))
    assert scores[4].exact_match >= scores[1].exact_match
    assert scores[10].exact_match >= scores[1].exact_match
    assert scores[1].length_accuracy >= 0.95
