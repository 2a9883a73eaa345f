"""`nat-hf export` and `ORTNATForConditionalGeneration`: ONNX Runtime decodes as the torch model does, for every
method's decoding loop, fp32 and int8; exported directories load wherever a model directory does; clear errors."""

import json

import pytest
import torch

from nat_hf import NATConfig, NATForConditionalGeneration
from nat_hf.inference import load_translator, translate_texts
from nat_hf.onnx_runtime import ExportError, ORTNATForConditionalGeneration, export_onnx
from nat_hf_cli import main as cli_main

from .conftest import objective_config_kwargs
from .test_inference import save_toy_translator

SOURCES = torch.tensor([[5, 6, 7, 8, 9, 10, 1], [11, 12, 1, 0, 0, 0, 0], [13, 14, 15, 16, 1, 0, 0]])


@pytest.fixture(scope="module")
def cmlm_export(tmp_path_factory):
    """A tiny cmlm model with a tokenizer (vocabulary 100, d_model 32), exported fp32 and int8."""
    root = tmp_path_factory.mktemp("onnx_cmlm")
    directory = save_toy_translator(root)
    export_onnx(directory, root / "onnx", int8=True)
    return directory, root / "onnx"


@pytest.fixture(scope="module")
def dag_export(tmp_path_factory):
    """A tiny dag model (another shape and vocabulary, a copy-mode decoder, a link-scorer head), no tokenizer."""
    root = tmp_path_factory.mktemp("onnx_dag")
    torch.manual_seed(0)
    model = NATForConditionalGeneration(NATConfig(**{**objective_config_kwargs("dag"), "decoder_input_mode": "copy"}))
    model.save_pretrained(root / "model")
    report = export_onnx(root / "model", root / "onnx")
    return model.eval(), root / "onnx", report


def test_cmlm_export_decodes_as_torch_for_every_mask_predict_setting(cmlm_export):
    directory, exported = cmlm_export
    torch_model, _ = load_translator(directory)
    onnx_model = ORTNATForConditionalGeneration.from_pretrained(exported, threads=1)
    source = SOURCES.clamp(max=torch_model.config.vocab_size - 1)
    attention_mask = (SOURCES != 0).long()
    for options in ({"num_iterations": 1, "length_beam": 1}, {"num_iterations": 4, "length_beam": 3},
                    {"num_iterations": 10, "length_beam": 5}, {"max_new_tokens": 3}):
        expected = torch_model.generate(input_ids=source, attention_mask=attention_mask, **options)
        assert torch.equal(onnx_model.generate(input_ids=source, attention_mask=attention_mask, **options), expected)
    expected = torch_model.generate(input_ids=source, attention_mask=attention_mask, return_dict_in_generate=True)
    output = onnx_model.generate(input_ids=source, attention_mask=attention_mask, return_dict_in_generate=True)
    assert torch.equal(output.sequences, expected.sequences) and torch.equal(output.lengths, expected.lengths)
    torch.testing.assert_close(output.sequences_scores, expected.sequences_scores, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="decoding_strategy"):  # the torch model's checks, unchanged
        onnx_model.generate(input_ids=source, decoding_strategy="viterbi")
    int8 = ORTNATForConditionalGeneration.from_pretrained(exported, int8=True, threads=1)
    quantised = int8.generate(input_ids=source, attention_mask=attention_mask)
    assert quantised.shape[0] == 3 and int(quantised.max()) < torch_model.config.vocab_size


def test_dag_export_decodes_as_torch_with_each_strategy(dag_export):
    model, exported, report = dag_export
    assert report["heads"] == {"link_scorer": "masked"} and report["graphs"][-1] == "link_scorer"
    onnx_model = ORTNATForConditionalGeneration.from_pretrained(exported, threads=1)
    attention_mask = (SOURCES != 0).long()
    for strategy in ("greedy", "lookahead", "viterbi"):
        expected = model.generate(input_ids=SOURCES, attention_mask=attention_mask, decoding_strategy=strategy)
        output = onnx_model.generate(input_ids=SOURCES, attention_mask=attention_mask, decoding_strategy=strategy)
        assert torch.equal(output, expected), strategy
    with pytest.raises(ValueError, match="length_beam"):
        onnx_model.generate(input_ids=SOURCES, length_beam=2)
    with pytest.raises(ValueError, match="no int8 graphs"):
        ORTNATForConditionalGeneration.from_pretrained(exported, int8=True)


def test_ctc_export_decodes_as_torch(tmp_path):
    """CTC: no head, an upsampled decoder and a blank token, greedy collapse: the export's output equals torch's."""
    torch.manual_seed(0)
    model = NATForConditionalGeneration(NATConfig(**{**objective_config_kwargs("ctc"), "decoder_input_mode": "copy"}))
    model.save_pretrained(tmp_path / "model")
    report = export_onnx(tmp_path / "model", tmp_path / "onnx")
    assert report["heads"] == {}
    onnx_model = ORTNATForConditionalGeneration.from_pretrained(tmp_path / "onnx", threads=1)
    attention_mask = (SOURCES != 0).long()
    expected = model.eval().generate(input_ids=SOURCES, attention_mask=attention_mask)
    assert torch.equal(onnx_model.generate(input_ids=SOURCES, attention_mask=attention_mask), expected)
    with pytest.raises(ValueError, match="num_iterations"):
        onnx_model.generate(input_ids=SOURCES, num_iterations=2)


def test_axe_export_decodes_as_torch_with_each_length_beam(tmp_path):
    """AXE: a length head and one decoder pass over each planned length, the best candidate by score: the export's
    output equals torch's for one and several length candidates."""
    torch.manual_seed(0)
    model = NATForConditionalGeneration(NATConfig(**objective_config_kwargs("axe")))
    model.save_pretrained(tmp_path / "model")
    report = export_onnx(tmp_path / "model", tmp_path / "onnx")
    assert set(report["heads"]) == {"length_predictor"}
    onnx_model = ORTNATForConditionalGeneration.from_pretrained(tmp_path / "onnx", threads=1)
    attention_mask = (SOURCES != 0).long()
    for length_beam in (1, 3):
        expected = model.eval().generate(input_ids=SOURCES, attention_mask=attention_mask, length_beam=length_beam)
        output = onnx_model.generate(input_ids=SOURCES, attention_mask=attention_mask, length_beam=length_beam)
        assert torch.equal(output, expected), length_beam
    with pytest.raises(ValueError, match="num_iterations"):
        onnx_model.generate(input_ids=SOURCES, num_iterations=2)


def test_an_export_translates_text_from_python_and_the_command_line(cmlm_export, capsys):
    directory, exported = cmlm_export
    sentences = ["three one two", "five four", "one"]
    torch_model, tokenizer = load_translator(directory)
    expected = translate_texts(torch_model, tokenizer, sentences, num_iterations=2)
    onnx_model, onnx_tokenizer = load_translator(exported, threads=1)
    assert isinstance(onnx_model, ORTNATForConditionalGeneration)
    assert translate_texts(onnx_model, onnx_tokenizer, sentences, num_iterations=2) == expected
    from transformers import pipeline

    translator = pipeline("nat-translation", model=onnx_model, tokenizer=onnx_tokenizer)
    assert [row["translation_text"] for row in translator(sentences, num_iterations=2)] == expected
    capsys.readouterr()
    cli_main(["translate", str(exported), *sentences, "--num-iterations", "2", "--threads", "1"])
    assert capsys.readouterr().out.splitlines() == expected
    cli_main(["translate", str(exported), *sentences, "--int8"])
    assert len(capsys.readouterr().out.splitlines()) == 3
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["translate", str(directory), "one", "--int8"])
    assert exit_info.value.code == 2 and "int8 applies to a model exported with nat-hf export --int8" in \
        capsys.readouterr().err


def test_export_errors_name_the_problem(cmlm_export, tmp_path, capsys):
    directory, exported = cmlm_export
    with pytest.raises(ExportError, match="not found"):
        export_onnx(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ExportError, match="is not empty"):
        export_onnx(directory, exported)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="no config.json"):
        export_onnx(tmp_path / "empty", tmp_path / "out")
    from transformers import MarianConfig, MarianMTModel

    MarianMTModel(MarianConfig(vocab_size=20, d_model=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                               decoder_attention_heads=2, encoder_ffn_dim=8, decoder_ffn_dim=8, pad_token_id=0,
                               eos_token_id=1, decoder_start_token_id=0)
                  ).save_pretrained(tmp_path / "ar")
    with pytest.raises(ExportError, match="is not a NAT model"):
        export_onnx(tmp_path / "ar", tmp_path / "out")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export", str(tmp_path / "missing"), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: model directory {tmp_path / 'missing'} not found\n"
    with pytest.raises(FileNotFoundError, match="is not an exported NAT model"):
        ORTNATForConditionalGeneration.from_pretrained(directory)
    assert json.loads((exported / "onnx_export.json").read_text())["int8"] is True


def test_bench_times_an_export_as_a_system(cmlm_export, tmp_path, toy_corpus):
    from nat_hf.bench import main as bench_main

    directory, exported = cmlm_export
    output = tmp_path / "speed.json"
    bench_main(["--system", f"torch={directory}:num_iterations=1,length_beam=1",
                "--system", f"onnx={exported}:num_iterations=1,length_beam=1",
                "--system", f"onnx-int8={exported}:int8=1,num_iterations=1,length_beam=1",
                "--system", f"torch-int8={directory}:int8=1,num_iterations=1,length_beam=1",
                "--source", str(toy_corpus / "val.en"), "--sentences", "4", "--batch-sizes", "1,2", "--repeats",
                "1", "--threads", "1", "--baseline", "torch", "--output", str(output)])
    systems = json.loads(output.read_text())["systems"]
    assert systems["onnx"]["model_class"] == "ORTNATForConditionalGeneration"
    assert systems["onnx-int8"]["model_class"] == "ORTNATForConditionalGeneration (int8)"
    assert systems["onnx"]["same_output_as"]["torch"] == 1.0 and "raw_forward_ms" not in systems["onnx"]
    assert systems["torch-int8"]["model_class"] == "NATForConditionalGeneration (int8)"

    # the model card names an export of the model as this model on ONNX Runtime, not as another model
    from nat_hf.hub import export_source, write_card
    from nat_hf.quality import main as quality_main

    assert export_source(str(exported)) == str(directory) and export_source(str(directory)) is None
    quality_main(["--system", f"torch={directory}:num_iterations=1,length_beam=1",
                  "--system", f"onnx={exported}:num_iterations=1,length_beam=1", "--data-dir", str(toy_corpus),
                  "--splits", "val", "--threads", "1", "--output", str(tmp_path / "quality.json")])
    card = write_card(directory, quality_path=tmp_path / "quality.json").text
    assert "| this model (torch) | val |" in card and "| this model on ONNX Runtime (onnx) | val |" in card

    # compile=1 compiles a torch model's stacks (lazily: the bench's warm-up pays for it), not an export
    from nat_hf.bench import System, Translator

    compiled = Translator(System("compiled", str(directory), {"compile": 1, "num_iterations": 1}))
    assert compiled.model_class == "NATForConditionalGeneration (compiled)"
    for module in (compiled.model.model.encoder, compiled.model.model.decoder, compiled.model.lm_head):
        assert isinstance(module, torch._dynamo.eval_frame.OptimizedModule)
    with pytest.raises(ValueError, match="compile=1 compiles a torch model; .* is an ONNX export"):
        Translator(System("onnx-compiled", str(exported), {"compile": 1}))


def test_an_export_drafts_for_speculative_decoding(cmlm_export):
    """The ONNX Runtime model is a drafter like the torch one (`nat_hf.speculative`): the AR's greedy output."""
    from transformers import MarianConfig, MarianMTModel

    from nat_hf.speculative import SpeculativeStats, speculative_kwargs

    directory, exported = cmlm_export
    onnx_model, tokenizer = load_translator(exported, threads=1)
    torch.manual_seed(0)
    ar = MarianMTModel(MarianConfig(vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
                                    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                    decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=0, eos_token_id=1,
                                    decoder_start_token_id=0)).eval()
    batch = tokenizer(["three one two", "five four four one", "two"], return_tensors="pt", padding=True)
    stats = SpeculativeStats()
    output = ar.generate(**batch, max_new_tokens=12, **speculative_kwargs(ar, onnx_model, stats=stats))
    assert torch.equal(output, ar.generate(**batch, max_new_tokens=12)) and len(stats.ar_forward_passes) == 3


def test_sessions_do_not_busy_wait_between_runs(cmlm_export):
    """ORT's threads would otherwise spin after each graph and starve the torch ops decoding runs between graphs."""
    _, exported = cmlm_export
    backbone = ORTNATForConditionalGeneration.from_pretrained(exported, threads=2).model
    for graph in (backbone.encoder, backbone.decoder):
        options = graph.session.get_session_options()
        for entry in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
            assert options.get_session_config_entry(entry) == "0"
