"""Learning check: a tiny CMLM model trained from scratch on a generated toy task must really learn it.

About 10 s on two CPU cores: a model of 200k parameters, 300 steps of 64 sequences (4 iterations reach 99.8% exact
match at 300 steps, 99.2% at 350; 90% asserted). The two-mode task (`sort_up_or_down`, where one pass mixes the
orders and refinement does not) is measured for every method over seeds by benchmarks/toy_two_mode.py (RESULTS.md,
toy-two-mode); the suite keeps only the DAG's (test_method_dag.py).
"""

from nat_hf import NATForConditionalGeneration
from nat_hf.toy import evaluate_toy_model, learn_toy_task


def train_on(task: str, seed: int = 0) -> tuple[NATForConditionalGeneration, list]:
    model, test, losses = learn_toy_task(task, steps=300, seed=seed)
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
