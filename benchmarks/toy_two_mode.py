"""The toy two-mode task (`sort_up_or_down`: each source has two correct outputs, ascending or descending order)
for every method, over seeds: `python benchmarks/toy_two_mode.py --seeds 0 1 2 --threads 2 --output toy.json`,
then `python benchmarks/results.py record-bench toy.json --name toy-two-mode --command "..."`.

Each recipe is the learning tests' tiny model (tests/test_learning.py, tests/test_method_*.py) with the steps and
options below, trained with `nat_hf.toy.learn_toy_task` and scored by exact match on 500 held-out pairs,
decoded in one pass (and, for Mask-Predict, with 4 iterations). One-pass CMLM mixes the two orders; the question is
which single-pass method does not. (The suite asserts only the DAG's; the rest are measured here, over seeds, as
some are seed-dependent.)"""

import argparse
import json
from pathlib import Path

import torch

from nat_hf.bench import machine
from nat_hf.toy import evaluate_toy_model, learn_toy_task

TASK = "sort_up_or_down"
# label: (learn_toy_task arguments, {decoding label: generate options})
RECIPES = {
    "cmlm": ({"steps": 800}, {"1 pass": {"num_iterations": 1, "length_beam": 1},
                              "4 iterations": {"num_iterations": 4, "length_beam": 1}}),
    "glat": ({"steps": 400, "objective": "glat", "decoder_input_mode": "mask",
              "method_options": {"glancing_ratio_start": 0.5, "glancing_ratio_end": 0.5, "glancing_anneal_steps": 0}},
             {"1 pass": {"num_iterations": 1, "length_beam": 1}}),
    "ctc": ({"steps": 300, "objective": "ctc", "max_target_positions": 32,
             "method_options": {"upsample_ratio": 2.0, "glancing_ratio_start": 0.0}}, {"1 pass": {}}),
    "dag+glancing": ({"steps": 200, "learning_rate": 5e-3, "objective": "dag", "max_target_positions": 32,
                      "method_options": {"upsample_ratio": 2.0, "glancing_ratio_start": 0.5}},
                     {strategy: {"decoding_strategy": strategy} for strategy in ("greedy", "lookahead", "viterbi")}),
    "axe": ({"steps": 300, "objective": "axe"}, {"1 pass": {"length_beam": 1}}),
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    systems = {}
    for label in args.methods:
        recipe, decodings = RECIPES[label]
        scores = {decoding: {} for decoding in decodings}
        for seed in args.seeds:
            model, test, _ = learn_toy_task(TASK, seed=seed, **recipe)
            for decoding, options in decodings.items():
                scores[decoding][str(seed)] = round(evaluate_toy_model(model, test, **options).exact_match, 4)
            print(label, seed, {decoding: values[str(seed)] for decoding, values in scores.items()}, flush=True)
        systems[label] = {"recipe": recipe, "exact_match": scores}
    results = {"machine": machine(args.threads), "task": TASK, "seeds": args.seeds, "systems": systems}
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
