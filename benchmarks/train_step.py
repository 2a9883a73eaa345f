"""Seconds per training step of a Multi30k-size NAT model on a random batch, and the kernel's share of them.

    python benchmarks/train_step.py [--objective dag] [--option upsample_ratio=8 ...] [--batch 256]
                                    [--source-length 15] [--target-length 15] [--steps 3] [--threads 2]

A random-weight model of the Multi30k size (d_model 256, 3+3 layers, FFN 1024, 4 heads, vocabulary 8000, dropout
0.1) takes `--steps` AdamW steps (forward, backward, update) on one random batch after one warm-up step, at
training step 100 (for the glancing schedule). Prints one JSON line: the median step in seconds, the user and
system CPU seconds and minor page faults of the timed steps (`getrusage`), whether jemalloc is loaded (it is when
run with `LD_PRELOAD=.../libjemalloc.so.2`), a loss checksum (to compare code versions or allocators: the losses
must not change) and the machine. Compare allocators by running it twice, e.g. with and without
`LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1`.
"""

import argparse
import json
import resource
import statistics
import time

import torch
import yaml

from nat_hf import NATConfig, NATForConditionalGeneration
from nat_hf.bench import machine


def parse_option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option takes NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    return name, yaml.safe_load(value)


def jemalloc_loaded() -> bool:
    with open("/proc/self/maps") as maps:
        return any("jemalloc" in line for line in maps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", default="dag")
    parser.add_argument("--option", type=parse_option, action="append", default=[],
                        help="a method option NAME=VALUE (repeatable), e.g. upsample_ratio=8")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--source-length", type=int, default=15)
    parser.add_argument("--target-length", type=int, default=15)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if min(args.batch, args.source_length, args.target_length, args.steps, args.threads) < 1:
        parser.error("--batch, --source-length, --target-length, --steps and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    options = dict(args.option)
    extra = {"blank_token_id": 4} if args.objective == "ctc" else {}  # special ids: the config defaults
    config = NATConfig(vocab_size=8000, d_model=256, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024, dropout=0.1,
                       max_source_positions=128, max_target_positions=1024, objective=args.objective,
                       method_options=options, **extra)
    model = NATForConditionalGeneration(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, config.vocab_size, (args.batch, args.source_length), generator=generator)
    input_ids[:, -1] = config.eos_token_id
    labels = torch.randint(5, config.vocab_size, (args.batch, args.target_length), generator=generator)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels, step=100).loss
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    step()  # warm-up: kernels, optimizer state, allocator
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds, losses = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        losses.append(step())
        seconds.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "objective": args.objective, "method_options": config.method_options, "batch": args.batch,
        "source_length": args.source_length, "target_length": args.target_length, "steps": args.steps,
        "median_step_seconds": round(statistics.median(seconds), 2),
        "user_seconds": round(after.ru_utime - before.ru_utime, 1),
        "system_seconds": round(after.ru_stime - before.ru_stime, 1),
        "minor_page_faults": after.ru_minflt - before.ru_minflt, "jemalloc": jemalloc_loaded(),
        "loss_checksum": round(sum(losses), 4), "machine": machine(args.threads),
    }))


if __name__ == "__main__":
    main()
