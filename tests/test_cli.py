"""`nat-hf translate` and `nat-hf evaluate`: output aligned with the input and streamed, bad lines reported by
number, clear errors and exit statuses for a missing model, a missing tokenizer or a bad option."""

import io
import json
import os
import select
import subprocess
import sys

import pytest

from nat_hf.inference import load_translator, translate_texts
from nat_hf_cli import main

from .test_inference import OVER_LONG, save_toy_translator


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
    return save_toy_translator(tmp_path_factory.mktemp("cli"))


@pytest.fixture(scope="module")
def expected(toy_model):
    """Translations of single sentences (batch size 1, so batching cannot change them)."""
    model, tokenizer = load_translator(toy_model)

    def translate(*texts: str) -> list[str]:
        return translate_texts(model, tokenizer, list(texts), batch_size=1, num_iterations=2)

    return translate


def save_tiny_ar(tokenizer_dir, directory) -> None:
    """A random Marian AR model with the toy tokenizer's vocabulary (pad 0 = decoder start, end-of-sentence 1),
    saved with that tokenizer."""
    from transformers import AutoTokenizer, MarianConfig, MarianMTModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    MarianMTModel(MarianConfig(vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
                               encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                               decoder_ffn_dim=32, max_position_embeddings=32, pad_token_id=0, eos_token_id=1,
                               decoder_start_token_id=0)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def run_cli(argv: list[str], capsys, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        main(argv)
        status = 0
    except SystemExit as exit:
        status = exit.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_translate_keeps_output_aligned_and_reports_over_long_lines(toy_model, expected, capsys, monkeypatch):
    lines = ["three one two", "", OVER_LONG, "five four", "   "]
    status, out, err = run_cli(["translate", str(toy_model), "--num-iterations", "2", "--batch-size", "1"], capsys,
                               stdin="\n".join(lines) + "\n", monkeypatch=monkeypatch)
    good = expected("three one two", "five four")
    assert out.split("\n") == [good[0], "", "", good[1], "", ""]  # one line per input line, then the final newline
    assert status == 1
    assert err.splitlines() == [
        "error: line 3: source has 21 tokens but the model accepts at most 16 (not translated); pass --truncation "
        "to cut it",
        "error: 1 of 5 lines not translated (their output lines are empty)",
    ]


def test_translate_with_truncation_cuts_and_warns(toy_model, expected, capsys, monkeypatch):
    status, out, err = run_cli(["translate", str(toy_model), "--num-iterations", "2", "--batch-size", "1",
                                "--truncation"], capsys, stdin=f"five\n{OVER_LONG}\n", monkeypatch=monkeypatch)
    assert status == 0
    assert out.splitlines() == expected("five", " ".join(["one"] * 15))
    assert err.splitlines() == ["warning: line 2: source cut from 21 tokens to the model's limit (--truncation)"]


def test_translate_arguments_and_files(toy_model, expected, capsys, tmp_path):
    status, out, _ = run_cli(["translate", str(toy_model), "three one two", "  ", "--num-iterations", "2",
                              "--batch-size", "1"], capsys)
    assert status == 0 and out.split("\n") == [*expected("three one two"), "", ""]
    source = tmp_path / "in.en"
    source.write_text("seven\n\nnine two\n")
    status, out, err = run_cli(["translate", str(toy_model), "--input", str(source), "--output",
                                str(tmp_path / "out.de"), "--num-iterations", "2", "--batch-size", "1",
                                "--progress"], capsys)
    assert status == 0 and out == ""
    assert (tmp_path / "out.de").read_text().split("\n") == [expected("seven")[0], "", expected("nine two")[0], ""]
    assert "3/3" in err  # the progress bar, on stderr, knows the file's length
    status, _, err = run_cli(["translate", str(toy_model), "--input", str(source)], capsys)
    assert status == 0 and err == ""  # no bar by default when stderr is not a terminal


@pytest.mark.parametrize("command", ["translate", "evaluate"])
def test_missing_model_or_tokenizer_is_one_clear_error(command, toy_model, tmp_path, capsys):
    source = tmp_path / "src.en"
    source.write_text("one\n")
    tail = ["one"] if command == "translate" else ["--source", str(source), "--reference", str(source)]
    status, out, err = run_cli([command, str(tmp_path / "nowhere"), *tail], capsys)
    assert (status, out, err) == (2, "", f"error: model directory {tmp_path / 'nowhere'} not found\n")
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((toy_model / name).read_bytes())
    status, out, err = run_cli([command, str(no_tokenizer), *tail], capsys)
    assert (status, out) == (2, "")
    assert err == (f"error: model directory {no_tokenizer} has no tokenizer: tokenizer.json and "
                   "tokenizer_config.json are missing (save one with tokenizer.save_pretrained)\n")


@pytest.mark.parametrize(("options", "message"), [
    (["--num-beams", "4"], "num_beams"),
    (["--length-beam", "0"], "length_beam"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--threads", "-2"], "--threads must be >= 1, got -2"),
])
def test_bad_options_exit_2_before_reading_input(toy_model, capsys, monkeypatch, options, message):
    stdin = io.StringIO("one\n")
    monkeypatch.setattr(sys, "stdin", stdin)
    status, out, err = run_cli(["translate", str(toy_model), *options], capsys)
    assert (status, out) == (2, "") and err.startswith("error: ") and message in err
    assert stdin.tell() == 0


def test_evaluate_reports_over_long_lines_before_decoding(toy_model, capsys, tmp_path):
    source, reference = tmp_path / "src.en", tmp_path / "ref.de"
    source.write_text(f"three one\n{OVER_LONG}\nfive\n")
    reference.write_text("eins drei\neins\nfünf\n")
    common = ["evaluate", str(toy_model), "--source", str(source), "--reference", str(reference),
              "--num-iterations", "2"]
    status, out, err = run_cli(common, capsys)
    assert (status, out) == (1, "")
    assert err.splitlines() == [
        f"error: {source}:2: source has 21 tokens but the model accepts at most 16",
        "error: 1 of 3 source lines are longer than the model accepts; pass --truncation to cut them",
    ]
    status, out, err = run_cli([*common, "--truncation", "--output", str(tmp_path / "hyp.de")], capsys)
    assert status == 0
    assert err.splitlines() == [f"warning: {source}:2: source has 21 tokens but the model accepts at most 16; cut "
                                "to that limit (--truncation)"]
    report = json.loads(out)
    assert report["sentences"] == 3 and report["truncated_sources"] == 1
    assert (tmp_path / "hyp.de").read_text().count("\n") == 3


STREAM = """
import sys
import nat_hf_cli
nat_hf_cli.main(["translate", sys.argv[1], "--chunk-size", "1", "--num-iterations", "2"])
"""


def test_translate_streams_each_chunk_before_reading_the_next(toy_model, expected):
    """With stdin a pipe kept open, the first line's translation must come out before the second line is sent."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-c", STREAM, str(toy_model)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        process.stdin.write("three one two\n")
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], 120)
        assert ready, "no output for the first line while stdin stays open: output is not streamed"
        first = process.stdout.readline()
        process.stdin.write(f"{OVER_LONG}\nfive\n")
        process.stdin.close()
        rest = process.stdout.read()
        status = process.wait(timeout=120)
        err = process.stderr.read()
    finally:
        process.kill()
    assert first == expected("three one two")[0] + "\n"
    assert rest == f"\n{expected('five')[0]}\n"
    assert status == 1 and "error: line 2: source has 21 tokens" in err and "Traceback" not in err


def test_translate_reports_non_utf8_input_and_nan_models_without_a_traceback(toy_model, expected, capsys, tmp_path):
    import torch

    source = tmp_path / "in.en"
    source.write_bytes(b"seven\n\xff\xfe bad\nnine two\n")
    status, out, err = run_cli(["translate", str(toy_model), "--input", str(source), "--num-iterations", "2",
                                "--batch-size", "1"], capsys)
    assert status == 1 and out.split("\n") == [*expected("seven"), "", *expected("nine two"), ""]
    assert err.splitlines() == ["error: line 2: not UTF-8 text (invalid start byte at byte 0) (not translated)",
                                "error: 1 of 3 lines not translated (their output lines are empty)"]

    model, tokenizer = load_translator(toy_model)
    with torch.no_grad():
        model.model.encoder.layers[0].ffn.fc1.weight.fill_(float("nan"))
    broken = tmp_path / "broken"
    model.save_pretrained(broken)
    tokenizer.save_pretrained(broken)
    capsys.readouterr()  # the bars of the loading above
    status, out, err = run_cli(["translate", str(broken), "three one two"], capsys)
    assert status == 2 and out == ""
    assert err.startswith("error: generate produced non-finite") and "Traceback" not in err


def test_translate_refuses_to_overwrite_its_input_and_evaluate_mismatched_files_exit_2(toy_model, capsys, tmp_path):
    source = tmp_path / "in.en"
    source.write_text("seven\n")
    status, out, err = run_cli(["translate", str(toy_model), "--input", str(source), "--output", str(source)], capsys)
    assert status == 2 and err.startswith("error: --output") and source.read_text() == "seven\n"
    reference = tmp_path / "ref.de"
    reference.write_text("sieben\nacht\n")
    status, _, err = run_cli(["evaluate", str(toy_model), "--source", str(source), "--reference", str(reference)],
                             capsys)
    assert status == 2 and err == f"error: {source} has 1 lines but {reference} has 2\n"


def test_method_option_flags_take_the_declared_type_and_an_option_of_another_method_exits_2(toy_model, capsys,
                                                                                             monkeypatch):
    import argparse

    from nat_hf.methods import METHODS
    from nat_hf_cli import add_decoding_options

    from .test_pipeline_nat import FakeMethod

    monkeypatch.setitem(METHODS, "fake", FakeMethod())  # a method registered later, with a float option
    parser = argparse.ArgumentParser()
    add_decoding_options(parser, with_methods=True)
    args = parser.parse_args(["--fake-exponent", "2", "--num-iterations", "3"])
    assert (args.fake_exponent, args.num_iterations) == (2.0, 3) and isinstance(args.fake_exponent, float)
    assert "[methods: fake]" in parser.format_help() and "[methods: cmlm, vanilla, glat" in parser.format_help()
    stdin = io.StringIO("one\n")
    monkeypatch.setattr(sys, "stdin", stdin)
    status, out, err = run_cli(["translate", str(toy_model), "--fake-exponent", "2"], capsys)
    assert (status, out) == (2, "") and stdin.tell() == 0
    assert err.startswith("error: decoding option(s) ['fake_exponent'] do not apply to method 'cmlm'")
    assert len(err.splitlines()) == 1
    status, out, err = run_cli(["translate", str(toy_model), "--fake-exponent", "abc"], capsys)
    assert status == 2 and "argument --fake-exponent: invalid float value: 'abc'" in err


def test_every_real_option_of_another_method_exits_2_naming_it(toy_model, capsys, tmp_path):
    from nat_hf.methods import METHODS, decoding_option_help

    source = tmp_path / "source.txt"
    source.write_text("one\n")
    for name, (kind, _) in decoding_option_help().items():
        if name in METHODS["cmlm"].option_defaults():
            continue
        value = "1" if kind in (int, float, "int", "float") else "x"
        for command in (["translate", str(toy_model), "one"],
                        ["evaluate", str(toy_model), "--source", str(source), "--reference", str(source)]):
            status, out, err = run_cli([*command, "--" + name.replace("_", "-"), value], capsys)
            assert (status, out) == (2, "") and len(err.splitlines()) == 1, (name, err)
            assert err.startswith(f"error: decoding option(s) ['{name}'] do not apply to method 'cmlm'"), err


def test_a_nat_option_for_an_autoregressive_model_exits_2(toy_model, capsys, tmp_path):
    save_tiny_ar(toy_model, tmp_path / "ar")
    capsys.readouterr()  # the saving's progress bar
    status, out, err = run_cli(["translate", str(tmp_path / "ar"), "one", "--length-beam", "2"], capsys)
    assert (status, out) == (2, "")
    assert err == (f"error: --length-beam: NAT decoding option(s), but {tmp_path / 'ar'} is not a NAT model "
                   "(MarianMTModel); use --num-beams / --max-new-tokens\n")


def test_drafter_flag_gives_the_autoregressive_greedy_output_and_bad_uses_exit_2(toy_model, capsys, tmp_path):
    """`--drafter NAT`: speculative decoding of the AR MODEL, whose greedy output it prints unchanged."""
    save_tiny_ar(toy_model, tmp_path / "ar")
    capsys.readouterr()
    ar = str(tmp_path / "ar")
    sentences = ["three one two", "five", "four four one"]
    status, greedy, _ = run_cli(["translate", ar, *sentences, "--max-new-tokens", "12"], capsys)
    assert status == 0 and greedy  # (a random AR model: its outputs may hold line breaks)
    for extra in ([], ["--draft-size", "2"], ["--draft-iterations", "2", "--batch-size", "1"]):
        status, out, err = run_cli(["translate", ar, *sentences, "--max-new-tokens", "12", "--drafter",
                                    str(toy_model), *extra], capsys)
        assert (status, out) == (0, greedy), err
    status, out, err = run_cli(["evaluate", ar, "--source", str(write(tmp_path / "s.en", sentences)), "--reference",
                                str(write(tmp_path / "r.de", sentences)), "--drafter", str(toy_model),
                                "--draft-size", "3"], capsys)
    assert status == 0
    decoding = json.loads(out)["decoding"]
    assert (decoding["drafter"], decoding["draft_size"], decoding["draft_iterations"]) == (str(toy_model), 3, 1)

    for argv, message in (
        ([ar, "x", "--draft-size", "2"], "error: --draft-size only apply with --drafter\n"),
        ([ar, "x", "--drafter", str(tmp_path / "none")], f"error: --drafter: model directory {tmp_path / 'none'} "
                                                         "not found\n"),
        ([str(toy_model), "x", "--drafter", str(toy_model)], "error: --drafter: speculative decoding verifies with "
                                                             "an autoregressive model"),
        ([ar, "x", "--drafter", str(toy_model), "--num-beams", "3"], "error: --drafter gives the model's greedy "
                                                                     "output; --num-beams 3 is beam search\n"),
        ([ar, "x", "--drafter", str(toy_model), "--draft-size", "0"], "error: --drafter: draft_size must be an "
                                                                      "int >= 1 or None, got 0\n"),
    ):
        status, out, err = run_cli(["translate", *argv], capsys)
        assert (status, out) == (2, "") and err.startswith(message), err


def write(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n")
    return path
