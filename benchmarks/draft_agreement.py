"""How far a NAT drafter agrees with its AR verifier, prefix by prefix: `python benchmarks/draft_agreement.py
--teacher TEACHER --drafter NAT_DIR --source test.en --sentences 200 --threads 2`.

For every sentence, the teacher's greedy output y (end-of-sentence included) and, for every prefix y[:j], the NAT's
draft of what follows (as speculative decoding asks it: `nat_hf.speculative.NATDrafter`, the whole remainder). The
agreeing run of a draft is the number of its first tokens equal to y[j:]: what one round of speculative decoding
would accept from that prefix. Prints, as JSON: the share of prefixes whose first drafted token agrees, the mean
agreeing run, and the mean run from the empty prefix (the first round). Diagnostic: it explains the acceptance that
`nat-hf bench speed` measures with `drafter=...` systems."""

import argparse
import json
from pathlib import Path

import torch

from nat_hf.inference import load_translator
from nat_hf.speculative import NATDrafter


def agreement(teacher, tokenizer, drafter, sources: list[str], max_new_tokens: int = 128) -> dict:
    runs, first_round = [], []
    with torch.no_grad():
        for source in sources:
            batch = tokenizer([source], return_tensors="pt")
            greedy = teacher.generate(**batch, max_new_tokens=max_new_tokens)[0, 1:]  # without the start token
            length = len(greedy)
            rows = {key: value.repeat(length, 1) for key, value in batch.items()}
            drafting = NATDrafter(drafter, rows["input_ids"], rows["attention_mask"])
            drafts = drafting.draft(greedy[None, :].repeat(length, 1), torch.arange(length),
                                    torch.full((length,), max_new_tokens))
            for start in range(length):
                draft, truth = drafts[start][drafts[start] >= 0].tolist(), greedy[start:].tolist()
                run = 0
                while run < min(len(draft), len(truth)) and draft[run] == truth[run]:
                    run += 1
                runs.append(run)
                if start == 0:
                    first_round.append(run)
    return {"sentences": len(sources), "prefixes": len(runs),
            "first_token_agreement": round(sum(run > 0 for run in runs) / len(runs), 3),
            "mean_agreeing_run": round(sum(runs) / len(runs), 2),
            "mean_run_from_empty_prefix": round(sum(first_round) / len(first_round), 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--drafter", required=True)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    teacher, tokenizer = load_translator(args.teacher)
    drafter, _ = load_translator(args.drafter)
    sources = [line for line in args.source.read_text(encoding="utf-8").splitlines() if line.strip()]
    report = {"teacher": args.teacher, "drafter": args.drafter,
              **agreement(teacher, tokenizer, drafter, sources[: args.sentences])}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
