import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import MarianConfig, MarianMTModel

from nat_hf import NATConfig, NATForConditionalGeneration
from nat_hf.bench import main, parse_system
from nat_hf.methods import METHODS
from nat_hf.tokenization import config_kwargs_from_tokenizer, train_tokenizer

from .conftest import objective_config_kwargs


def test_parse_system():
    system = parse_system("mp4=runs/x/best:num_iterations=4,length_beam=3")
    assert (system.label, system.path, system.options) == ("mp4", "runs/x/best", {"num_iterations": 4,
                                                                                   "length_beam": 3})
    with pytest.raises(ValueError, match="LABEL=MODEL"):
        parse_system("no-model")


@pytest.fixture
def tiny_systems(tmp_path, toy_corpus):
    tokenizer = train_tokenizer(files=[toy_corpus / "train.en", toy_corpus / "train.de"], vocab_size=100,
                                algorithm="bpe")
    torch.manual_seed(0)
    nat = NATForConditionalGeneration(NATConfig(**config_kwargs_from_tokenizer(tokenizer), d_model=32,
                                                encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                                decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                                max_source_positions=32, max_target_positions=32,
                                                max_length_offset=8))
    ar = MarianMTModel(MarianConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                                    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                    decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=0, eos_token_id=1,
                                    decoder_start_token_id=0))
    for name, model in (("nat", nat), ("ar", ar)):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    return tmp_path


def test_speed_benchmark_runs_on_tiny_models_and_writes_json(tmp_path, toy_corpus, tiny_systems):
    output = tmp_path / "speed.json"
    main(["--system", f"nat-1pass={tmp_path / 'nat'}:num_iterations=1,length_beam=1",
          "--system", f"nat-mp4={tmp_path / 'nat'}:num_iterations=4,length_beam=2",
          "--system", f"ar-greedy={tmp_path / 'ar'}:num_beams=1,max_new_tokens=10",
          "--system", f"ct2={tmp_path / 'ar'}:backend=ctranslate2,beam_size=1,max_decoding_length=10",
          "--source", str(toy_corpus / "val.en"), "--sentences", "6", "--batch-sizes", "1,3", "--repeats", "2",
          "--threads", "1", "--baseline", "ar-greedy", "--baseline", "ct2", "--lengths", "4,40",
          "--output", str(output)])
    results = json.loads(output.read_text())
    assert results["machine"]["torch_threads"] == 1 and results["sentences"] == 6
    render_results(tmp_path, output)
    assert set(results["systems"]) == {"nat-1pass", "nat-mp4", "ar-greedy", "ct2"}
    for label, entry in results["systems"].items():
        assert entry["latency_ms"]["median"] > 0 and entry["latency_ms"]["p90"] >= entry["latency_ms"]["median"]
        assert set(entry["throughput_sentences_per_second"]) == {"1", "3"}
        assert ("raw_forward_ms" in entry) == (label == "nat-1pass")  # the same arithmetic as generate
    assert results["baselines"] == ["ar-greedy", "ct2"]
    assert results["systems"]["ar-greedy"]["speedup"]["ar-greedy"] == {"latency": 1.0,
                                                                      "throughput": {"1": 1.0, "3": 1.0}}
    nat, ct2 = results["systems"]["nat-1pass"], results["systems"]["ct2"]
    assert nat["speedup"]["ct2"]["latency"] == round(ct2["latency_ms"]["median"] / nat["latency_ms"]["median"], 2)
    assert set(results["length_cost"]["latency_ms"]["nat-mp4"]) == {"4", "40"}
    assert all(value > 0 for value in results["length_cost"]["latency_ms"]["ar-greedy"].values())
    # the NAT model has 32 positions, the AR model 64: only the NAT systems are timed with extended tables
    assert results["length_cost"]["positions_extended_to"] == {"nat-1pass": 40, "nat-mp4": 40}

    # a model card shows the chosen systems and the baselines the speed-ups refer to; an unknown label is an error
    from nat_hf.hub import write_card

    card = write_card(tmp_path / "nat", speed_path=output, systems=["nat-mp4"]).text
    shown = {label for label, entry in results["systems"].items()
             if f"| {label} | {entry['latency_ms']['median']} |" in card}
    assert shown == {"nat-mp4", "ar-greedy", "ct2"}
    with pytest.raises(ValueError, match=r"--systems names \['nat-2pass'\]"):
        write_card(tmp_path / "nat", speed_path=output, systems=["nat-1pass", "nat-2pass"])


@pytest.mark.parametrize("threads", ["0", "-1", "two"])
def test_a_bad_thread_count_is_a_usage_error_in_every_command(threads, capsys):
    from nat_hf.demo import main as demo_main
    from nat_hf.distill import main as distill_main
    from nat_hf.quality import main as quality_main

    for command in (lambda: main(["--system", "x=y", "--source", "s", "--threads", threads]),
                    lambda: quality_main(["--system", "x=y", "--data-dir", "d", "--threads", threads]),
                    lambda: distill_main(["teacher", "--data-dir", "d", "--output-dir", "o", "--threads", threads]),
                    lambda: demo_main(["--threads", threads])):
        with pytest.raises(SystemExit) as stop:
            command()
        assert stop.value.code == 2
        assert "argument --threads: expected an integer >= 1, got" in capsys.readouterr().err


def test_length_cost_extends_short_position_tables_for_timing_only(tmp_path, tiny_systems):
    from nat_hf.bench import System, Translator, benchmark_length_cost

    nat = System("nat-mp2", str(tmp_path / "nat"), {"num_iterations": 2, "length_beam": 2})  # 32 positions
    ar = System("ar-greedy", str(tmp_path / "ar"), {"num_beams": 1})  # 64 positions
    cost = benchmark_length_cost([nat, ar], [8, 48], threads=1, repeats=1)
    assert cost["positions_extended_to"] == {"nat-mp2": 48}
    assert set(cost["latency_ms"]["nat-mp2"]) == {"8", "48"}
    extended, trained = Translator(nat, min_output_length=48), Translator(nat)
    assert trained.positions_extended_to is None and trained.max_length == 32 and extended.max_length == 48
    assert extended.model.model.encoder.embed_positions.weight.shape == (48, 32)
    # a sinusoidal table is recomputed: every trained tensor is kept whole, or as the first rows of its extension
    sinusoidal = NATForConditionalGeneration(NATConfig.from_pretrained(tmp_path / "nat",
                                                                       position_embedding_type="sinusoidal"))
    sinusoidal.save_pretrained(tmp_path / "nat-sin")
    trained.tokenizer.save_pretrained(tmp_path / "nat-sin")
    trained = Translator(System("s", str(tmp_path / "nat-sin")))
    extended = Translator(System("s", str(tmp_path / "nat-sin")), min_output_length=48)
    trained_state, extended_state = trained.model.state_dict(), extended.model.state_dict()
    for name, tensor in trained_state.items():
        assert torch.equal(extended_state[name][: len(tensor)], tensor), name
    with pytest.raises(ValueError, match="ar-greedy produces at most 64 tokens"):
        benchmark_length_cost([System("ar-greedy", str(tmp_path / "ar"), {"backend": "ctranslate2"})], [80], 1, 1)


def test_quality_benchmark_reports_failure_modes(tmp_path, toy_corpus, tiny_systems):
    from nat_hf.quality import main as quality_main
    from nat_hf.quality import paired_bootstrap, repeated_token_share

    assert repeated_token_share([["a", "a", "b"], ["c", "c", "c", "d"]]) == 3 / 7
    output = tmp_path / "quality.json"
    with pytest.raises(ValueError, match=r"--baseline names systems that are not given: \['teacher'\]"):
        quality_main(["--system", f"nat={tmp_path / 'nat'}", "--data-dir", str(toy_corpus), "--threads", "1",
                      "--baseline", "teacher"])
    quality_main(["--system", f"nat={tmp_path / 'nat'}:num_iterations=2,length_beam=2",
                  "--system", f"ar={tmp_path / 'ar'}:num_beams=2,max_new_tokens=10", "--data-dir",
                  str(toy_corpus), "--splits", "val", "--threads", "1", "--baseline", "nat", "--output", str(output)])
    systems = json.loads(output.read_text())["systems"]
    scores = systems["nat"]["splits"]["val"]
    ar_hypotheses = systems["ar"]["splits"]["val"]["hypotheses"]
    assert scores["same_output_as"] == {"nat": [40, 40]}
    assert systems["ar"]["splits"]["val"]["same_output_as"] == {
        "nat": [sum(a == b for a, b in zip(ar_hypotheses, scores["hypotheses"], strict=True)), 40]}
    # each other system's BLEU difference to the baseline, tested (not the baseline against itself)
    assert "nat" not in scores["paired_bootstrap"]
    references = (toy_corpus / "val.de").read_text().splitlines()
    assert systems["ar"]["splits"]["val"]["paired_bootstrap"] == {
        "nat": paired_bootstrap(scores["hypotheses"], ar_hypotheses, references)}
    assert scores["sentences"] == 40 and len(scores["hypotheses"]) == 40
    # length errors in tokens of the system's tokenizer (the repeated-token share is checked per objective below)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "nat")
    lengths = [(len(tokenizer.tokenize(h)), len(tokenizer.tokenize(r)))
               for h, r in zip(scores["hypotheses"], references, strict=True)]
    assert scores["length_error_relative_mean"] == round(sum((h - r) / max(r, 1) for h, r in lengths) / 40, 4)
    assert scores["length_error_absolute_mean"] == round(sum(abs(h - r) for h, r in lengths) / 40, 3)
    assert sum(bucket["sentences"] for bucket in scores["bleu_by_source_length"].values()) == 40

    # the model card keeps the other systems of the run as named comparisons
    from nat_hf.hub import write_card

    card = write_card(tmp_path / "nat", quality_path=output).text
    assert f"| this model (nat) | val | {scores['bleu']:.2f} |" in card
    # ... named by label and described below the table, never by its local path
    assert f"| ar | val | {systems['ar']['splits']['val']['bleu']:.2f} |" in card and str(tmp_path) not in card
    assert "- ar: an autoregressive Transformer (transformers `MarianMTModel`)" in card
    assert "num_beams=2, max_new_tokens=10" in card

    # RESULTS.md: the quality table with a BLEU-gap column, and the frontier plot once a speed record shares systems
    results = load_results_script(tmp_path)
    with pytest.raises(ValueError, match="not in"):
        results.record_bench(output, "tiny-quality", "nat-hf bench quality ...", gap_to=["teacher"])
    results.record_bench(output, "tiny-quality", "nat-hf bench quality ...", gap_to=["ar"])
    results.FRONTIER_SPLIT = "val"
    speed = tmp_path / "speed.json"
    main(["--system", f"nat={tmp_path / 'nat'}:num_iterations=2,length_beam=2", "--system",
          f"ar={tmp_path / 'ar'}:num_beams=2,max_new_tokens=10", "--source", str(toy_corpus / "val.en"),
          "--sentences", "3", "--batch-sizes", "1", "--repeats", "1", "--threads", "1", "--baseline", "ar",
          "--output", str(speed)])
    results.record_bench(speed, "tiny-speed", "nat-hf bench speed ...")
    results.README.write_text(f"# x\n\n{results.README_BEGIN}\nold\n{results.README_END}\n\n## next\n")
    results.render()
    text = results.RESULTS_MD.read_text()
    gap = systems["nat"]["splits"]["val"]["bleu"] - systems["ar"]["splits"]["val"]["bleu"]
    assert "| BLEU gap to ar |" in text and f"| nat | val | {scores['bleu']} | {gap:+.2f} |" in text
    assert "| system | split | same output as nat |" in text and "| nat | val | 40 / 40 |" in text
    p_value = systems["ar"]["splits"]["val"]["paired_bootstrap"]["nat"]["p_value"]
    assert f"| ar | val | {systems['ar']['splits']['val']['same_output_as']['nat'][0]} / 40; p = {p_value} |" in text
    assert "| ar | val | " + f"{systems['ar']['splits']['val']['bleu']} | +0.00 |" in text
    assert "![BLEU vs latency](records/frontier.png)" in text and (results.RECORDS / "frontier.png").is_file()
    readme = results.README.read_text()  # the README block: regenerated between its markers, the rest kept
    latency = json.loads(speed.read_text())["systems"]["nat"]["latency_ms"]["median"]
    assert readme.startswith("# x\n\n") and readme.endswith(f"{results.README_END}\n\n## next\n")
    assert "old" not in readme
    assert f"| nat | {scores['bleu']} | {latency} |" in readme
    speedup = json.loads(speed.read_text())["systems"]["nat"]["speedup"]["ar"]["latency"]
    assert f"| nat | {scores['bleu']} | {latency} | {speedup}x |" in readme
    card = write_card(tmp_path / "nat", quality_path=output, speed_path=speed).text  # and the card's speed table
    assert "speed-up vs ar (batch 1)" in card and f"| nat | {latency} | " in card and f" | {speedup}x |" in card


def test_ctranslate2_conversion_translates_like_transformers(tmp_path, tiny_systems, toy_corpus):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from nat_hf.ctranslate import CTranslate2Model

    ar_dir = tiny_systems / "ar"
    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(ar_dir).eval(), AutoTokenizer.from_pretrained(ar_dir)
    with torch.no_grad():  # a random model: give it a non-zero <pad> row, as trained tied models have
        model.model.shared.weight[0].normal_()
    model.save_pretrained(ar_dir)
    sources = (toy_corpus / "val.en").read_text().splitlines()[:10]
    expected = tokenizer.batch_decode(model.generate(**tokenizer(sources, return_tensors="pt", padding=True),
                                                     num_beams=1, max_new_tokens=12), skip_special_tokens=True)
    converted = CTranslate2Model(ar_dir, "default", threads=1, cache_dir=tmp_path / "ct2")
    assert converted.generate_texts(sources, beam_size=1, max_decoding_length=12) == expected


def load_results_script(tmp_path):
    """benchmarks/results.py, writing its records and RESULTS.md under tmp_path."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "results.py"
    spec = importlib.util.spec_from_file_location("results_script", path)
    results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results)
    results.RECORDS, results.RESULTS_MD = tmp_path / "records", tmp_path / "RESULTS.md"
    results.README = tmp_path / "README.md"  # never the repository's
    return results


def render_results(tmp_path, speed_json):
    """benchmarks/results.py turns the JSON into RESULTS.md tables and plots."""
    results = load_results_script(tmp_path)
    results.record_bench(speed_json, "tiny-speed", "nat-hf bench speed ...")
    results.render()
    text = results.RESULTS_MD.read_text()
    assert "### tiny-speed" in text and "| ct2 |" in text and "overhead" in text and "Cost against output" in text
    assert "Speed-up against `ar-greedy`" in text and "Speed-up against `ct2`" in text
    assert "position tables extended" in text and "nat-mp4 to 40" in text
    assert (results.RECORDS / "tiny-speed-batch.png").is_file()
    assert (results.RECORDS / "tiny-speed-length.png").is_file()


def test_ar_translation_is_not_cut_at_the_transformers_default_of_20_tokens(tiny_systems, toy_corpus):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from nat_hf.inference import translate_texts, with_output_length_cap

    ar = AutoModelForSeq2SeqLM.from_pretrained(tiny_systems / "ar").eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_systems / "ar")
    assert with_output_length_cap(ar, {"num_beams": 1}) == {"num_beams": 1, "max_new_tokens": 63}
    assert with_output_length_cap(ar, {"max_new_tokens": 5}) == {"max_new_tokens": 5}
    nat = AutoModelForSeq2SeqLM.from_pretrained(tiny_systems / "nat")
    assert with_output_length_cap(nat, {}) == {}
    ar.final_logits_bias[0, tokenizer.eos_token_id] = -1e4  # a model that never ends: only the cap stops it
    source = (toy_corpus / "val.en").read_text().splitlines()[0]
    batch = tokenizer([source], return_tensors="pt")
    capped = ar.generate(**batch, num_beams=1, max_new_tokens=63)
    assert capped.shape[1] == 64  # decoder start + 63
    assert translate_texts(ar, tokenizer, [source], num_beams=1) == tokenizer.batch_decode(capped,
                                                                                          skip_special_tokens=True)
    assert ar.generate(**batch, num_beams=1).shape[1] <= 21  # what transformers alone returns: cut at 20


@pytest.fixture
def objective_systems(tmp_path, toy_corpus):
    """A tiny random model of every objective in `METHODS` (same tokenizer), saved under tmp_path/<objective>."""
    tokenizer = train_tokenizer(files=[toy_corpus / "train.en", toy_corpus / "train.de"], vocab_size=100,
                                algorithm="bpe")
    base = dict(config_kwargs_from_tokenizer(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                max_source_positions=32, max_target_positions=32, max_length_offset=8, dropout=0.0)
    for objective in METHODS:
        torch.manual_seed(0)
        model = NATForConditionalGeneration(NATConfig(**objective_config_kwargs(objective, base)))
        model.save_pretrained(tmp_path / objective)
        tokenizer.save_pretrained(tmp_path / objective)
    return tmp_path, tokenizer


def option_text(value) -> str:
    """How a user writes an option: a whole float as an integer (`viterbi_length_exponent=1`), to be read as the
    float the method declares."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def test_every_methods_options_are_read_as_declared_and_the_method_decides_the_raw_pass(objective_systems, toy_corpus):
    root, _ = objective_systems
    specs = [f"{objective}={root / objective}:" + ",".join(f"{name}={option_text(value)}" for name, value
                                                            in METHODS[objective].option_defaults().items())
             for objective in METHODS]
    output = root / "speed.json"
    main([arg for spec in specs for arg in ("--system", spec)] + [
        "--source", str(toy_corpus / "val.en"), "--sentences", "3", "--batch-sizes", "1", "--repeats", "1",
        "--threads", "1", "--output", str(output)])
    systems = json.loads(output.read_text())["systems"]
    assert set(systems) == set(METHODS)
    for objective, method in METHODS.items():
        defaults = method.option_defaults()
        options = systems[objective]["options"]
        assert options == defaults and [type(value) for value in options.values()] == \
            [type(value) for value in defaults.values()], objective  # `1` for a float option is 1.0
        assert ("raw_forward_ms" in systems[objective]) == method.is_single_pass(defaults), objective


def test_a_system_option_of_another_method_or_of_the_wrong_type_is_an_error_naming_it(objective_systems):
    from nat_hf.bench import System, Translator
    from nat_hf.inference import option_value_type
    from nat_hf.methods import decoding_option_help

    root, _ = objective_systems
    foreign = sorted(set(decoding_option_help()) - set(METHODS["glat"].option_defaults()))
    if not foreign:
        pytest.skip("every registered method has glat's options")
    with pytest.raises(ValueError, match=f"{foreign[0]}.*do not apply to method 'glat'"):
        Translator(System("glat", str(root / "glat"), {foreign[0]: 1}))
    floats = [(objective, name) for objective, method in METHODS.items()
              for name, (kind, _) in method.option_help().items() if option_value_type(kind) is float]
    if not floats:
        pytest.skip("no registered method has a float option")
    objective, name = floats[0]
    with pytest.raises(ValueError, match=f"{name} must be a number, got 'abc'"):
        Translator(parse_system(f"x={root / objective}:{name}=abc"))


def test_the_repeated_token_share_is_reported_for_every_system(objective_systems, toy_corpus):
    from nat_hf.quality import main as quality_main
    from nat_hf.quality import repeated_token_share

    root, tokenizer = objective_systems
    output = root / "quality.json"
    quality_main([arg for objective in METHODS for arg in ("--system", f"{objective}={root / objective}")]
                 + ["--data-dir", str(toy_corpus), "--splits", "val", "--threads", "1", "--output", str(output)])
    systems = json.loads(output.read_text())["systems"]
    assert set(systems) == set(METHODS)
    references = (toy_corpus / "val.de").read_text().splitlines()
    for objective, entry in systems.items():
        scores = entry["splits"]["val"]
        share = repeated_token_share([tokenizer.tokenize(text) for text in scores["hypotheses"]])
        assert scores["repeated_token_share"] == round(share, 4), objective
        assert scores["reference_repeated_token_share"] == round(
            repeated_token_share([tokenizer.tokenize(text) for text in references]), 4)


def test_interim_and_side_study_records_are_rendered_but_never_the_headline(tmp_path):
    """`record-bench --interim` (a checkpoint of a run in progress) and `--side-study` (one question beside fewer
    systems): their tables and notes appear in RESULTS.md, but the README headline and the frontier keep the
    newest other records. Bench JSONs: the repository's own speed and quality records' data."""
    results = load_results_script(tmp_path)
    records = Path(__file__).resolve().parents[1] / "benchmarks" / "records"
    speed = json.loads((records / "speed.json").read_text())["data"]
    quality = json.loads((records / "quality.json").read_text())["data"]
    final, interim, quality_json = tmp_path / "final.json", tmp_path / "interim.json", tmp_path / "quality.json"
    final.write_text(json.dumps(speed))
    later = {**speed, "machine": {**speed["machine"], "date": "2099-01-01"}}
    interim.write_text(json.dumps(later))
    side = tmp_path / "side.json"
    side.write_text(json.dumps({**speed, "machine": {**speed["machine"], "date": "2099-02-01"}}))
    quality_json.write_text(json.dumps(quality))
    headline = []
    results.write_readme_block = lambda lines: True
    results.plot_frontier = lambda speed, quality, split: headline.append(speed["name"]) or False
    results.record_bench(final, "a-final", "cmd")
    results.record_bench(quality_json, "q", "cmd")
    results.record_bench(interim, "z-interim", "cmd", note="step 1500 of 2000", interim=True)
    results.record_bench(side, "z-side", "cmd", note="one ratio", side_study=True)
    results.render()
    text = results.RESULTS_MD.read_text()
    assert "### z-interim" in text and "- note: step 1500 of 2000" in text
    assert "- interim: measured on a checkpoint of a run still in progress" in text
    assert "### z-side" in text and "- note: one ratio" in text
    assert "- side study: one question beside fewer systems; not the headline" in text
    # the newer interim and side-study records (by date and by name) are not the headline
    assert headline == ["a-final"]


def test_speculative_and_assisted_systems_report_counts_and_match_greedy(tmp_path, toy_corpus, tiny_systems):
    """`drafter=NAT` (ours) and `assistant=AR` (transformers' assisted generation) on an AR system: the batch-1
    outputs equal the AR's greedy ones (`same_output_as`), and ours reports its rounds and acceptance."""
    output = tmp_path / "speed.json"
    ar = tmp_path / "ar"
    main(["--system", f"ar-greedy={ar}:num_beams=1,max_new_tokens=10",
          "--system", f"spec={ar}:drafter={tmp_path / 'nat'},draft_size=3,max_new_tokens=10",
          "--system", f"assisted={ar}:assistant={ar},num_assistant_tokens=4,max_new_tokens=10",
          "--source", str(toy_corpus / "val.en"), "--sentences", "5", "--batch-sizes", "1,2", "--repeats", "1",
          "--threads", "1", "--baseline", "ar-greedy", "--output", str(output)])
    systems = json.loads(output.read_text())["systems"]
    assert {label: entry["same_output_as"]["ar-greedy"] for label, entry in systems.items()} == {
        "ar-greedy": 1.0, "spec": 1.0, "assisted": 1.0}
    counts = systems["spec"]["speculative"]
    assert counts["sentences"] == 5 and 5 <= counts["ar_forward_passes"] <= 5 * 11
    assert sum(bucket["sentences"] for bucket in counts["by_output_length"].values()) == 5
    assert systems["spec"]["options"]["drafter"] == str(tmp_path / "nat")
    assert "speculative" not in systems["assisted"] and "speculative" not in systems["ar-greedy"]
    # assisted generation translates one sentence a call: no batch-2 throughput
    assert systems["assisted"]["throughput_sentences_per_second"]["2"] is None
    assert systems["assisted"]["speedup"]["ar-greedy"]["throughput"]["2"] is None
    assert systems["spec"]["throughput_sentences_per_second"]["2"] > 0

    # quality: the same system options (assisted generation decodes one sentence a call)
    from nat_hf.quality import main as quality_main

    quality = tmp_path / "quality.json"
    quality_main(["--system", f"ar-greedy={ar}:num_beams=1,max_new_tokens=10",
                  "--system", f"spec={ar}:drafter={tmp_path / 'nat'},max_new_tokens=10",
                  "--system", f"assisted={ar}:assistant={ar},max_new_tokens=10",
                  "--system", f"ct2={ar}:backend=ctranslate2,beam_size=1,max_decoding_length=10",
                  "--data-dir", str(toy_corpus),
                  "--splits", "val", "--batch-size", "8", "--threads", "1", "--output", str(quality)])
    scores = json.loads(quality.read_text())["systems"]
    assert scores["spec"]["splits"]["val"]["hypotheses"] == scores["ar-greedy"]["splits"]["val"]["hypotheses"]
    assert scores["assisted"]["splits"]["val"]["hypotheses"] == scores["ar-greedy"]["splits"]["val"]["hypotheses"]
    assert (scores["spec"]["batch_size"], scores["assisted"]["batch_size"]) == (8, 1)
    assert len(scores["ct2"]["splits"]["val"]["hypotheses"]) == 40  # CTranslate2 systems are scored too

    # RESULTS.md: the identity and acceptance tables, n/a where a system cannot batch
    results = load_results_script(tmp_path)
    results.record_bench(output, "tiny-spec", "nat-hf bench speed ...")
    results.render()
    text = results.RESULTS_MD.read_text()
    assert "| spec | 100.00% |" in text and "| assisted | 100.00% |" in text
    counts = systems["spec"]["speculative"]
    assert (f"| spec | {counts['ar_forward_passes_per_sentence']:.2f} | {counts['tokens_per_round']:.2f} | "
            in text)
    assert "| assisted | " in text and "n/a" in text


def test_toy_two_mode_script_records_exact_match_per_method_and_seed(tmp_path, monkeypatch):
    """benchmarks/toy_two_mode.py (recipes shortened to a few steps here) and its RESULTS.md table."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "toy_two_mode.py"
    spec = importlib.util.spec_from_file_location("toy_two_mode", path)
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    for label, (recipe, decodings) in toy.RECIPES.items():  # each recipe names a method and options it has
        method = METHODS[recipe.get("objective", "cmlm")]
        assert all(set(options) <= set(method.option_defaults()) for options in decodings.values()), label
    short = {label: ({**recipe, "steps": 2}, decodings) for label, (recipe, decodings) in toy.RECIPES.items()}
    monkeypatch.setattr(toy, "RECIPES", short)
    output = tmp_path / "toy.json"
    data = toy.main(["--seeds", "0", "1", "--methods", "cmlm", "dag+glancing", "--threads", "1", "--output",
                     str(output)])
    assert set(data["systems"]) == {"cmlm", "dag+glancing"}
    assert set(data["systems"]["dag+glancing"]["exact_match"]) == {"greedy", "lookahead", "viterbi"}
    results = load_results_script(tmp_path)
    results.record_bench(output, "toy", "python benchmarks/toy_two_mode.py ...")
    results.render()
    text = results.RESULTS_MD.read_text()
    values = data["systems"]["cmlm"]["exact_match"]["1 pass"]
    assert f"| cmlm | 1 pass | {values['0']:.1%} | {values['1']:.1%} |" in text and "## Toy tasks" in text


@pytest.mark.parametrize(("family", "decoding", "words"), [
    ("nat", {"decoding_strategy": "lookahead"}, "decoding strategy lookahead"),
    ("nat", {"num_iterations": 4, "length_beam": 3}, "4 iterations, length beam 3"),
    ("ar", {"num_beams": 1}, "greedy"),
])
def test_a_training_record_renders_with_the_eval_decoding_mappings(tmp_path, family, decoding, words):
    """Training runs configured with `eval.decoding` / `eval.final_decoding` (any method's options) render."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("\n".join(json.dumps(record) for record in (
        {"event": "start", "time": 0.0}, {"event": "train", "step": 1, "loss": 5.0},
        {"event": "eval", "step": 2, "train_seconds": 60.0, "valid_loss": 4.0, "valid_bleu": 12.5})) + "\n")
    (run / "results.json").write_text(json.dumps({
        "steps": 2, "epochs": 0, "train_seconds": 60.0, "best_valid_bleu": 12.5, "best_step": 2, "val_bleu": 12.0,
        "val_chrf": 30.0, "val_decode_seconds": 1.0, "sacrebleu_signature": "sig", **decoding}))
    model = {"family": family, "d_model": 8, "encoder_layers": 1, "decoder_layers": 1, "attention_heads": 2,
             "ffn_dim": 16, "dropout": 0.1, **({"objective": "dag"} if family == "nat" else {})}
    (run / "train_config.yaml").write_text(yaml.safe_dump({
        "model": model, "data": {"data_dir": "d", "source_lang": "en", "target_lang": "de"},
        "eval": {"decoding": decoding, "final_decoding": decoding, "max_sentences": 500, "batch_size": 50},
        "run": {"threads": 1}}))
    results = load_results_script(tmp_path)
    results.record(run, "run", "nat-hf train x.yaml", commit="abc1234")
    results.render()
    text = results.RESULTS_MD.read_text()
    assert f"(periodic validation BLEU 12.50 with {words}, first 500 sentences)" in text
    assert f"| split | sacreBLEU | chrF | decoding time ({words}, batch 50) |" in text


def test_an_adversarial_continued_run_renders_its_model_settings_and_discriminator(tmp_path):
    """A run continued from a saved model (`model.init_from`) renders that model's shape (its config has none), an
    adversarial run its settings and, per evaluation interval, the discriminator's losses and accuracy."""
    run = tmp_path / "run"
    run.mkdir()
    terms = {"token": 2.0, "length": 0.5, "adversarial": 0.75, "discriminator": 0.6}
    (run / "log.jsonl").write_text("\n".join(json.dumps(record) for record in (
        {"event": "start", "time": 0.0},
        {"event": "train", "step": 1, "loss": 2.1, "loss_terms": terms, "metrics": {"discriminator_accuracy": 0.5}},
        {"event": "train", "step": 2, "loss": 1.9, "loss_terms": {**terms, "discriminator": 0.4},
         "metrics": {"discriminator_accuracy": 0.7}},
        {"event": "eval", "step": 2, "train_seconds": 60.0, "valid_loss": 4.0, "valid_bleu": 12.5})) + "\n")
    (run / "results.json").write_text(json.dumps({
        "steps": 2, "epochs": 0, "train_seconds": 60.0, "best_valid_bleu": 12.5, "best_step": 2, "val_bleu": 12.0,
        "val_chrf": 30.0, "val_decode_seconds": 1.0, "sacrebleu_signature": "sig", "num_iterations": 1,
        "length_beam": 1}))
    NATConfig(**{**objective_config_kwargs("glat"), "dropout": 0.2}).save_pretrained(run / "best")
    (run / "train_config.yaml").write_text(yaml.safe_dump({
        "model": {"family": "nat", "init_from": "runs/start/best", "d_model": 512, "encoder_layers": 6,
                  "decoder_layers": 6, "attention_heads": 8, "ffn_dim": 2048, "dropout": 0.1, "objective": "cmlm"},
        "data": {"data_dir": "d", "source_lang": "en", "target_lang": "de"},
        "eval": {"decoding": {}, "final_decoding": {}, "max_sentences": 500, "batch_size": 50},
        "run": {"threads": 1},
        "adversarial": {"enabled": True, "weight": 0.2, "discriminator": {"d_model": 64}, "learning_rate": 1e-4,
                        "discriminator_steps": 1, "discriminator_warmup_steps": 100, "temperature_start": 1.0,
                        "temperature_end": 0.5, "temperature_anneal_steps": 600, "label_smoothing": 0.1}}))
    results = load_results_script(tmp_path)
    results.record(run, "adversarial", "nat-hf train x.yaml", commit="abc1234")
    results.render()
    text = results.RESULTS_MD.read_text()
    assert ("- model: glat, d_model 32, 2+2 layers, 4 heads, FFN 64, dropout 0.2, continued from `runs/start/best`; "
            "data `d` (en->de)") in text
    assert ("- adversarial: weight 0.2, discriminator {'d_model': 64} (lr 0.0001, 1 step(s) per generator step, 100 "
            "warm-up steps), Gumbel-softmax temperature 1.0 -> 0.5 over 600 steps, label smoothing 0.1") in text
    assert "| adversarial | discriminator | discriminator accuracy |" in text
    assert "| 2 | 1.0 | 2.0 | 4.0 | 12.5 | 0.75 | 0.5 | 0.6 |" in text


def test_paired_bootstrap_tells_a_real_difference_from_none():
    from nat_hf.quality import paired_bootstrap

    references = [f"the {animal} sits on the mat number {i} today" for i, animal in enumerate(["cat", "dog"] * 50)]
    baseline = [text.replace("mat", "rug") if i % 2 else text for i, text in enumerate(references)]
    one_off = [text.replace("today", "now") if i == 0 else text for i, text in enumerate(baseline)]
    assert paired_bootstrap(baseline, one_off, references, samples=200)["p_value"] > 0.05  # one word in 100 lines
    worse = [" ".join(text.split()[:4]) for text in references]  # drops half of every sentence
    tested = paired_bootstrap(baseline, worse, references, samples=200)
    assert tested["p_value"] < 0.05 and tested["samples"] == 200
    assert tested == paired_bootstrap(baseline, worse, references, samples=200)  # a fixed seed
    with pytest.raises(ValueError, match="one hypothesis per reference"):
        paired_bootstrap(references, worse[:-1], references)
