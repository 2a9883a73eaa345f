"""Peak memory of one large `generate` call, in a fresh process: what the chunked output projection bounds.

    python benchmarks/generate_memory.py [--batch 256] [--length-beam 5] [--iterations 10] [--threads 1]
                                         [--logits-budget-mib N] [--repeats N]

A random-weight NAT model of the Multi30k size (d_model 256, 3+3 layers, FFN 1024, vocabulary 8000) translates
`--batch` random 20-token sources. Prints one JSON line: resident memory before the call, its peak during the call
(`ru_maxrss`), their difference, the seconds the call took, a checksum of the output (to compare code versions:
the tokens must not change) and the machine. Run it once per code version, e.g. in a `git worktree` of an older
commit with `PYTHONPATH=<worktree>/src`. `--logits-budget-mib` sets `method_base.LOGITS_BUDGET_BYTES` (the output
projection's chunk) for the process; `--repeats` times that many calls after the first and adds their median
seconds and minor page faults (the kernel's share of large allocations on CPU).
"""

import argparse
import json
import resource
import statistics
import time

import torch

from nat_hf import NATConfig, NATForConditionalGeneration, method_base
from nat_hf.bench import machine


def resident_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--length-beam", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--logits-budget-mib", type=float, default=None)
    parser.add_argument("--repeats", type=int, default=0)
    args = parser.parse_args()
    if args.logits_budget_mib is not None:
        method_base.LOGITS_BUDGET_BYTES = int(args.logits_budget_mib * 2**20)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = NATConfig(vocab_size=8000, d_model=256, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024,
                       max_source_positions=64, max_target_positions=64, dropout=0.0)
    model = NATForConditionalGeneration(config).eval()
    input_ids = torch.randint(5, config.vocab_size, (args.batch, 20), generator=torch.Generator().manual_seed(1))
    input_ids[:, -1] = config.eos_token_id
    model.generate(input_ids[:2], num_iterations=2, length_beam=2)  # allocator and kernels warmed up
    before = resident_mb()
    start = time.perf_counter()
    output = model.generate(input_ids, num_iterations=args.iterations, length_beam=args.length_beam,
                            return_dict_in_generate=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    repeated, faults = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.generate(input_ids, num_iterations=args.iterations, length_beam=args.length_beam)
        repeated.append(time.perf_counter() - start)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    timing = {"logits_budget_mib": method_base.LOGITS_BUDGET_BYTES / 2**20, "repeats": args.repeats}
    if repeated:
        timing.update(median_repeat_seconds=round(statistics.median(repeated), 3),
                      page_faults_per_repeat=faults // args.repeats)
    print(json.dumps({
        "batch": args.batch, "length_beam": args.length_beam, "iterations": args.iterations,
        "resident_before_mb": round(before), "peak_mb": round(peak), "peak_increase_mb": round(peak - before),
        "seconds": round(seconds, 1), "token_checksum": int(output.sequences.sum()),
        "score_sum": round(float(output.sequences_scores.sum()), 4), **timing, "machine": machine(args.threads),
    }))


if __name__ == "__main__":
    main()
