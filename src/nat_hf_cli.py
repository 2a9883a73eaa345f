"""The `nat-hf` command: `train`, `translate`, `evaluate`, `distill`, `bench speed|quality`, `card`, `push`.

A top-level module, not part of the `nat_hf` package, so that `nat-hf --help` does not pay for importing
transformers' model classes (about 4 s); each command imports what it needs."""

import argparse
import json
import sys
from pathlib import Path


def add_decoding_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-iterations", type=int, help="Mask-Predict passes (NAT; default: the model's)")
    parser.add_argument("--length-beam", type=int, help="length candidates per sentence (NAT; default: the model's)")
    parser.add_argument("--num-beams", type=int, help="beam size, for autoregressive models (e.g. a teacher)")
    parser.add_argument("--max-new-tokens", type=int, help="cap on the output length, end-of-sentence included")
    parser.add_argument("--batch-size", type=int, default=50, help="sentences per generate call")
    parser.add_argument("--truncation", action="store_true", help="cut over-long sources instead of failing")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")


def decoding_kwargs(args: argparse.Namespace) -> dict:
    names = ("num_iterations", "length_beam", "num_beams", "max_new_tokens")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def load(args: argparse.Namespace):
    import torch

    from nat_hf.inference import load_translator

    if args.threads:
        torch.set_num_threads(args.threads)
    return load_translator(args.model, device=args.device)


def command_translate(args: argparse.Namespace) -> None:
    from nat_hf.inference import translate_texts

    sources = args.text or [line.rstrip("\n") for line in sys.stdin]
    model, tokenizer = load(args)
    for translation in translate_texts(model, tokenizer, sources, args.batch_size, args.truncation,
                                       **decoding_kwargs(args)):
        print(translation)


def command_evaluate(args: argparse.Namespace) -> None:
    import time

    import torch

    from nat_hf.data import read_lines
    from nat_hf.inference import translate_texts
    from nat_hf.metrics import load_sacrebleu

    sources, references = read_lines(args.source), read_lines(args.reference)
    if len(sources) != len(references):
        raise SystemExit(f"error: {args.source} has {len(sources)} lines but {args.reference} has {len(references)}")
    model, tokenizer = load(args)
    start = time.perf_counter()
    hypotheses = translate_texts(model, tokenizer, sources, args.batch_size, args.truncation, **decoding_kwargs(args))
    seconds = time.perf_counter() - start
    scores = load_sacrebleu().compute(predictions=hypotheses, references=references)
    if args.output:
        Path(args.output).write_text("\n".join(hypotheses) + "\n", encoding="utf-8")
    decoding = {name: getattr(model.generation_config, name, None)
                for name in ("num_iterations", "length_beam", "num_beams", "max_new_tokens")}
    decoding.update(decoding_kwargs(args))
    print(json.dumps({
        "model": str(args.model), "model_class": type(model).__name__, "source": str(args.source),
        "sentences": len(sources), "bleu": round(scores["bleu"], 2), "chrf": round(scores["chrf"], 2),
        "signature": scores["signature"], "decoding": {k: v for k, v in decoding.items() if v is not None},
        "batch_size": args.batch_size, "threads": torch.get_num_threads(), "decode_seconds": round(seconds, 2),
    }, indent=1))


def command_train(args: argparse.Namespace) -> None:
    from nat_hf.train import main as train_main

    extra = (["--resume"] if args.resume else []) + (["--init-from-ar", args.init_from_ar] if args.init_from_ar else [])
    train_main([args.config, *args.overrides, *extra])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nat-hf", description="Non-autoregressive translation models for 🤗 "
                                     "transformers.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a NAT model from a YAML config (Accelerate)")
    train.add_argument("config")
    train.add_argument("overrides", nargs="*", help="section.key=value")
    train.add_argument("--resume", action="store_true")
    train.add_argument("--init-from-ar", metavar="DIR", help="start from the matching weights of an AR model "
                       "(a Marian/BART-style checkpoint; its tokenizer is used)")
    train.set_defaults(run=command_train)

    translate = commands.add_parser("translate", help="translate text arguments or stdin lines")
    translate.add_argument("model", help="a saved model directory or a Hub repo id")
    translate.add_argument("text", nargs="*", help="sentences (default: read stdin, one per line)")
    add_decoding_options(translate)
    translate.set_defaults(run=command_translate)

    evaluate = commands.add_parser("evaluate", help="sacreBLEU/chrF of a model on a source/reference file pair")
    evaluate.add_argument("model")
    evaluate.add_argument("--source", required=True, type=Path)
    evaluate.add_argument("--reference", required=True, type=Path)
    evaluate.add_argument("--output", type=Path, help="write the translations here")
    add_decoding_options(evaluate)
    evaluate.set_defaults(run=command_evaluate)

    # these have their own parsers; listed here for --help
    commands.add_parser("distill", help="sequence-level distillation with an AR teacher (see nat-hf distill -h)")
    commands.add_parser("bench", help="benchmarks: `nat-hf bench speed -h`, `nat-hf bench quality -h`")
    commands.add_parser("card", help="write a model card from measured results (see nat-hf card -h)")
    commands.add_parser("push", help="upload a model directory to the Hub, or --dry-run (see nat-hf push -h)")

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["distill"]:
        from nat_hf.distill import main as distill_main

        distill_main(argv[1:])
        return
    if argv[:2] == ["bench", "speed"]:
        from nat_hf.bench import main as speed_main

        speed_main(argv[2:])
        return
    if argv[:1] in (["card"], ["push"]):
        from nat_hf.hub import main_card, main_push

        (main_card if argv[0] == "card" else main_push)(argv[1:])
        return
    if argv[:2] == ["bench", "quality"]:
        from nat_hf.quality import main as quality_main

        quality_main(argv[2:])
        return
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
