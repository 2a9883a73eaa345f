"""The `nat-hf` command: `train`, `translate`, `evaluate`, `distill`, `export`, `bench speed|quality`, `card`, `push`.

A top-level module, not part of the `nat_hf` package, so that `nat-hf --help` does not pay for importing
transformers' model classes (about 4 s); each command imports what it needs."""

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:  # imported lazily at run time: `nat-hf --help` stays fast
    from tqdm import tqdm

    from nat_hf.inference import UnreadableSource

DEFAULT_CHUNK_SIZE = 1000  # input lines read, translated and printed at a time by `nat-hf translate`


GENERIC_DECODING_OPTIONS = ("num_beams", "max_new_tokens")


def add_decoding_options(parser: argparse.ArgumentParser, with_methods: bool) -> None:
    """Decoding flags: every NAT method's options as declared by the method (`nat_hf.methods`; e.g.
    `--num-iterations`, `--length-beam`), read only when `with_methods` (the commands that load a model anyway:
    importing `nat_hf` costs seconds), plus `--num-beams` and `--max-new-tokens`."""
    names = []
    if with_methods:
        from nat_hf.methods import METHODS, decoding_option_help

        for name, (kind, text) in decoding_option_help().items():
            owners = [method_name for method_name, method in METHODS.items() if name in method.option_defaults()]
            parser.add_argument("--" + name.replace("_", "-"), type=option_parser(name, kind),
                                help=f"{text} [methods: {', '.join(owners)}]" if text else f"[methods: "
                                f"{', '.join(owners)}]")
            names.append(name)
    parser.set_defaults(method_option_names=tuple(names))
    parser.add_argument("--num-beams", type=int, help="beam size, for autoregressive models (e.g. a teacher)")
    parser.add_argument("--max-new-tokens", type=int, help="cap on the output length, end-of-sentence included")
    parser.set_defaults(decoding_names=(*names, *GENERIC_DECODING_OPTIONS))
    parser.add_argument("--drafter", metavar="NAT_MODEL", help="speculative decoding: this NAT model drafts, MODEL "
                        "(an autoregressive encoder-decoder sharing its tokenizer) verifies; the output is MODEL's "
                        "greedy output, token for token")
    parser.add_argument("--draft-size", type=int, help="with --drafter: the most tokens drafted per round (default: "
                        "the whole remainder)")
    parser.add_argument("--draft-iterations", type=int, help="with --drafter: NAT decoder passes per draft "
                        "(default 1)")
    parser.add_argument("--batch-size", type=int, default=50, help="sentences per generate call")
    parser.add_argument("--truncation", action="store_true", help="cut over-long sources to the model's limit "
                        "(with a warning on stderr naming each line) instead of failing them")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, help="a progress bar on stderr "
                        "(default: when stderr is a terminal, the input is a file or piped, not typed, and the "
                        "output is not printed on the terminal)")
    parser.add_argument("--threads", type=int, help="CPU threads (torch's, or ONNX Runtime's for a model exported "
                        "with nat-hf export)")
    parser.add_argument("--int8", action="store_true", help="for a model exported with nat-hf export --int8: its "
                        "int8 graphs")
    parser.add_argument("--device", default="cpu")


def option_parser(name: str, declared) -> "Callable[[str], object]":
    """The argparse `type` of a method's decoding option: its declared type (`int`, `float` (e.g.
    `--viterbi-length-exponent 1.2`), `str`, `bool` as true/false), however the method's dataclass spells it
    (`nat_hf.inference.option_value_type`). Named after the type, for argparse's "invalid float value" message."""
    from nat_hf.inference import option_value_type, parse_option_value

    kind = option_value_type(declared)
    if kind in (int, float, str):
        return kind

    def parse(text: str):
        return parse_option_value(name, text, kind)

    parse.__name__ = kind.__name__
    return parse


def decoding_kwargs(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in args.decoding_names if getattr(args, name) is not None}


def speculative_options(args: argparse.Namespace, model) -> dict:
    """The `generate` arguments of `--drafter` (none without it), checked: exit status 2 on a missing drafter, a
    NAT MODEL, a drafter with another tokenizer, beam search, or draft flags without `--drafter`."""
    from nat_hf.inference import ModelNotFoundError, load_translator
    from nat_hf.speculative import speculative_kwargs

    if args.drafter is None:
        given = [flag for flag, value in (("--draft-size", args.draft_size),
                                          ("--draft-iterations", args.draft_iterations)) if value is not None]
        if given:
            fail(f"{', '.join(given)} only apply with --drafter")
        return {}
    if args.num_beams is not None and args.num_beams != 1:
        fail(f"--drafter gives the model's greedy output; --num-beams {args.num_beams} is beam search")
    try:
        with loading_bars(args):
            drafter, _ = load_translator(args.drafter, device=args.device)
        return speculative_kwargs(model, drafter, args.draft_size,
                                  1 if args.draft_iterations is None else args.draft_iterations)
    except ModelNotFoundError as error:
        fail(f"--drafter: {error}")
    except ValueError as error:
        fail(f"--drafter: {error}")


def fail(message: str, status: int = 2) -> NoReturn:
    """End the command with `error: message` on stderr (no traceback) and exit `status`."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


@contextlib.contextmanager
def loading_bars(args: argparse.Namespace) -> Iterator[None]:
    """transformers' "Loading weights" bars only with --progress (or on a terminal): stderr is for this command's
    own messages."""
    from transformers.utils import logging

    bars = logging.is_progress_bar_enabled()
    if not (args.progress if args.progress is not None else sys.stderr.isatty()):
        logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            logging.enable_progress_bar()


def load(args: argparse.Namespace):
    import torch

    from nat_hf.inference import ModelNotFoundError, load_translator

    if args.threads is not None and args.threads < 1:
        fail(f"--threads must be >= 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        with loading_bars(args):
            return load_translator(args.model, device=args.device, int8=args.int8, threads=args.threads)
    except (ModelNotFoundError, ValueError) as error:
        fail(str(error))


def check_options(model, args: argparse.Namespace) -> None:
    """Exit with status 2 on a bad decoding option or batch size, before any input is read or translated."""
    from nat_hf.inference import check_generate_kwargs

    if args.batch_size < 1:
        fail(f"--batch-size must be >= 1, got {args.batch_size}")
    if getattr(args, "chunk_size", None) is not None and args.chunk_size < 1:
        fail(f"--chunk-size must be >= 1, got {args.chunk_size}")
    if getattr(model, "nat_method", None) is None:  # an AR model: no NAT method takes these
        given = [name for name in getattr(args, "method_option_names", ()) if getattr(args, name) is not None]
        if given:
            fail(f"{', '.join('--' + name.replace('_', '-') for name in given)}: NAT decoding option(s), but "
                 f"{args.model} is not a NAT model ({type(model).__name__}); use --num-beams / --max-new-tokens")
    try:
        check_generate_kwargs(model, decoding_kwargs(args))
    except ValueError as error:
        fail(str(error))


def progress_bar(args: argparse.Namespace, typed_input: bool, total: int | None,
                 streamed_output: bool = False) -> "tqdm | None":
    """A tqdm bar on stderr, or None: shown with --progress, or by default when stderr is a terminal, the input is
    not typed in (text arguments or a terminal on stdin), and translations are not printed to that terminal.
    With `--input`, the file's lines are counted for the bar's total only when there is a bar."""
    show = args.progress if args.progress is not None else (
        sys.stderr.isatty() and not typed_input and not (streamed_output and sys.stdout.isatty()))
    if not show:
        return None
    if total is None and getattr(args, "input", None) is not None:
        with args.input.open("rb") as counting:
            total = sum(1 for _ in counting)
    from tqdm import tqdm

    return tqdm(total=total, unit=" lines", file=sys.stderr, dynamic_ncols=True)


def report(bar: "tqdm | None", message: str) -> None:
    """A line on stderr that does not break the progress bar."""
    if bar is None:
        print(message, file=sys.stderr, flush=True)
    else:
        bar.write(message, file=sys.stderr)


def decoded_lines(stream: Iterable[bytes | str]) -> "Iterator[str | UnreadableSource]":
    """Lines of a binary stream as text without their line break; a line that is not UTF-8 becomes an
    `UnreadableSource`, reported in its place like any failed line (the others are still translated)."""
    from nat_hf.inference import UnreadableSource

    for raw in stream:
        if isinstance(raw, str):  # a text stream (already decoded)
            yield raw.rstrip("\r\n")
            continue
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as error:
            yield UnreadableSource(f"not UTF-8 text ({error.reason} at byte {error.start})")


def command_translate(args: argparse.Namespace) -> None:
    from nat_hf.inference import translate_lines

    if args.text and args.input:
        fail("give sentences as arguments or --input FILE, not both")
    if args.input and not args.input.is_file():
        fail(f"input file {args.input} not found")
    if args.input and args.output and args.output.exists() and args.output.samefile(args.input):
        fail(f"--output {args.output} is the --input file: writing it would erase the input")
    model, tokenizer = load(args)
    check_options(model, args)
    speculative = speculative_options(args, model)
    input_file = args.input.open("rb") if args.input else None
    if args.text:
        sources, what, total, typed = args.text, "text", len(args.text), True
    elif input_file is not None:
        sources, what, total, typed = decoded_lines(input_file), "line", None, False
    else:
        stdin = getattr(sys.stdin, "buffer", sys.stdin)  # bytes, so that a non-UTF-8 line fails on its own
        sources, what, total, typed = decoded_lines(stdin), "line", None, sys.stdin.isatty()
    # a terminal on stdin: translate each line as it is typed
    chunk_size = args.chunk_size or (1 if input_file is None and not args.text and typed else DEFAULT_CHUNK_SIZE)
    try:
        output = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
    except OSError as error:
        fail(f"cannot write --output {args.output}: {error}")
    bar = progress_bar(args, typed, total, streamed_output=output is sys.stdout)
    results = translate_lines(model, tokenizer, sources, args.batch_size, args.truncation, chunk_size,
                              progress=bar.update if bar is not None else None, **decoding_kwargs(args),
                              **speculative)
    failed = count = 0
    try:
        for count, result in enumerate(results, 1):
            if result.error is not None:
                failed += 1
                hint = "; pass --truncation to cut it" if result.error.startswith("source has") else ""
                report(bar, f"error: {what} {count}: {result.error}{hint}")
            elif result.truncated_from is not None:
                report(bar, f"warning: {what} {count}: source cut from {result.truncated_from} tokens to the "
                       "model's limit (--truncation)")
            output.write(result.text + "\n")  # an empty line for a blank or failed source keeps lines aligned
            output.flush()
    except FloatingPointError as error:  # NaN/inf scores: a broken model, not a bad line
        fail(str(error))
    finally:
        if bar is not None:
            bar.close()
        if output is not sys.stdout:
            output.close()
        if input_file is not None:
            input_file.close()
    if failed:
        fail(f"{failed} of {count} {what}s not translated (their output lines are empty)", status=1)


def command_evaluate(args: argparse.Namespace) -> None:
    import time

    import torch

    from nat_hf.data import DataError, read_lines
    from nat_hf.inference import over_long_sources, source_limit, too_long_message, translate_lines
    from nat_hf.metrics import load_sacrebleu

    try:
        sources, references = read_lines(args.source), read_lines(args.reference)
    except DataError as error:
        fail(str(error))
    if len(sources) != len(references):
        fail(f"{args.source} has {len(sources)} lines but {args.reference} has {len(references)}")
    model, tokenizer = load(args)
    check_options(model, args)
    speculative = speculative_options(args, model)
    over = over_long_sources(model, tokenizer, sources)
    for index, tokens in over.items():  # reported before any decoding time is spent
        print(f"{'warning' if args.truncation else 'error'}: {args.source}:{index + 1}: "
              f"{too_long_message(tokens, source_limit(model.config))}"
              f"{'; cut to that limit (--truncation)' if args.truncation else ''}", file=sys.stderr)
    if over and not args.truncation:
        fail(f"{len(over)} of {len(sources)} source lines are longer than the model accepts; pass --truncation to "
             "cut them", status=1)
    bar = progress_bar(args, False, len(sources))
    start = time.perf_counter()
    results = translate_lines(model, tokenizer, sources, args.batch_size, args.truncation, max(len(sources), 1),
                              progress=bar.update if bar is not None else None, **decoding_kwargs(args),
                              **speculative)
    hypotheses = [result.text for result in results]
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    scores = load_sacrebleu().compute(predictions=hypotheses, references=references)
    if args.output:
        Path(args.output).write_text("\n".join(hypotheses) + "\n", encoding="utf-8")
    decoding = {name: getattr(model.generation_config, name, None) for name in args.decoding_names}
    decoding.update(decoding_kwargs(args))
    if speculative:
        decoding.update(drafter=str(args.drafter), draft_size=speculative["draft_size"],
                        draft_iterations=speculative["draft_iterations"])
    print(json.dumps({
        "model": str(args.model), "model_class": type(model).__name__, "source": str(args.source),
        "sentences": len(sources), "bleu": round(scores["bleu"], 2), "chrf": round(scores["chrf"], 2),
        "signature": scores["signature"], "decoding": {k: v for k, v in decoding.items() if v is not None},
        "batch_size": args.batch_size, "threads": torch.get_num_threads(), "decode_seconds": round(seconds, 2),
        "truncated_sources": len(over) if args.truncation else 0,
    }, indent=1))


def command_train(args: argparse.Namespace) -> None:
    from nat_hf.train import main as train_main

    extra = (["--resume"] if args.resume else []) + (["--init-from-ar", args.init_from_ar] if args.init_from_ar else [])
    train_main([args.config, *args.overrides, *extra])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    with_methods = bool(argv) and argv[0] in ("translate", "evaluate")  # the method flags cost an import
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

    translate = commands.add_parser(
        "translate", help="translate text arguments, a file or stdin lines",
        description="Translate sentences: text arguments, --input FILE or stdin, one per line. Output has one line "
        "per input line, in input order, printed chunk by chunk as soon as a chunk is translated. A blank input "
        "line gives an empty output line. A source longer than the model accepts gives an empty output line, an "
        "error on stderr naming its line, and exit status 1 at the end (--truncation cuts it instead, with a "
        "warning). A missing model or a bad option: exit status 2.")
    translate.add_argument("model", help="a saved model directory or a Hub repo id")
    translate.add_argument("text", nargs="*", help="sentences (default: read --input or stdin, one per line)")
    translate.add_argument("--input", type=Path, metavar="FILE", help="read sentences from FILE, one per line")
    translate.add_argument("--output", type=Path, metavar="FILE", help="write translations to FILE (default: stdout)")
    translate.add_argument("--chunk-size", type=int, metavar="LINES", help="lines read, length-sorted into batches, "
                           f"translated and written at a time (default: {DEFAULT_CHUNK_SIZE}; 1 when stdin is a "
                           "terminal)")
    add_decoding_options(translate, with_methods)
    translate.set_defaults(run=command_translate)

    evaluate = commands.add_parser("evaluate", help="sacreBLEU/chrF of a model on a source/reference file pair")
    evaluate.add_argument("model")
    evaluate.add_argument("--source", required=True, type=Path)
    evaluate.add_argument("--reference", required=True, type=Path)
    evaluate.add_argument("--output", type=Path, help="write the translations here")
    add_decoding_options(evaluate, with_methods)
    evaluate.set_defaults(run=command_evaluate)

    # these have their own parsers; listed here for --help
    commands.add_parser("distill", help="sequence-level distillation with an AR teacher (see nat-hf distill -h)")
    commands.add_parser("export", help="export a NAT model to ONNX, fp32 and int8 (see nat-hf export -h)")
    commands.add_parser("bench", help="benchmarks: `nat-hf bench speed -h`, `nat-hf bench quality -h`")
    commands.add_parser("card", help="write a model card from measured results (see nat-hf card -h)")
    commands.add_parser("push", help="upload a model directory to the Hub, or --dry-run (see nat-hf push -h)")

    if argv[:1] == ["distill"]:
        from nat_hf.distill import main as distill_main

        distill_main(argv[1:])
        return
    if argv[:1] == ["export"]:
        from nat_hf.onnx_runtime import main as export_main

        export_main(argv[1:])
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
