"""Model cards name data and models publicly (Hub names, descriptions, placeholders), never by a local path."""

import json
import re

import pytest
import torch
import yaml

from nat_hf import NATConfig, NATForConditionalGeneration
from nat_hf.hub import (
    DataInfo,
    Distillation,
    data_section,
    find_distillation,
    identify_data,
    local_path_leaks,
    placeholders,
    stage_upload,
    with_placeholders,
    write_card,
)
from nat_hf.methods import METHODS
from nat_hf.train import load_config

from .conftest import TINY, write_toy_corpus
from .test_remote_code import non_default_options, objective_config_kwargs

# an absolute path: a "/" opening a word that is not part of "//" (URLs) nor a "}/" or "<...>/" placeholder
ABSOLUTE_PATH = re.compile(r"(?:^|[\s`'\"(=:])/(?!/)[\w.-]+/")


def write_teacher(directory):
    """A tiny Marian AR model with the `eval.json` the shared teacher has."""
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(0)
    model = MarianMTModel(MarianConfig(vocab_size=40, d_model=32, encoder_layers=2, decoder_layers=1,
                                       encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                       decoder_ffn_dim=64, max_position_embeddings=24, pad_token_id=0,
                                       eos_token_id=1, decoder_start_token_id=0))
    model.save_pretrained(directory)
    (directory / "eval.json").write_text(json.dumps({"results": {
        "test_2016_flickr.beam1": {"bleu": 12.345, "chrf": 40.0}, "test_2016_flickr.beam4": {"bleu": 13.456}}}))
    return sum(parameter.numel() for name, parameter in model.named_parameters() if "embed_positions" not in name)


@pytest.fixture
def local_run(tmp_path, monkeypatch):
    """A finished run whose config names data and teacher by machine-local relative paths, as ours does:
    `../shared/data/multi30k` (+ `/distill`) and `../shared/models/teacher`, from the working directory `work/`."""
    shared = tmp_path / "shared"
    data = write_toy_corpus(shared / "data" / "multi30k",
                            (("train", 30), ("val", 7), ("test_2016_flickr", 5)))
    write_toy_corpus(data / "distill", (("train", 30),))
    teacher_parameters = write_teacher(shared / "models" / "teacher")
    work = tmp_path / "work"
    best = work / "runs" / "x" / "best"
    NATForConditionalGeneration(NATConfig(**TINY)).save_pretrained(best)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # present for an upload; the card does not read them
        (best / name).write_text("{}")
    config = {"model": {"init_from_ar": "../shared/models/teacher", "d_model": 32},
              "data": {"data_dir": "../shared/data/multi30k/distill", "eval_data_dir": "../shared/data/multi30k",
                       "dataset_name": "bentrevett/multi30k", "source_lang": "en", "target_lang": "de",
                       "train_split": "train", "valid_split": "val", "test_splits": ["test_2016_flickr"],
                       "tokenizer": "../shared/models/teacher", "max_tokens": 512},
              "run": {"output_dir": "runs/x"}}
    (best / "train_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (best.parent / "results.json").write_text(json.dumps({
        "steps": 20, "train_seconds": 120.0, "best_step": 20, "best_valid_bleu": 1.0, "val_bleu": 21.234,
        "val_chrf": 50.0, "test_2016_flickr_bleu": 22.345, "test_2016_flickr_chrf": 51.0, "num_iterations": 10,
        "length_beam": 5, "family": "nat"}))
    monkeypatch.chdir(work)
    return tmp_path, best, config, teacher_parameters


def test_card_names_dataset_and_teacher_and_no_local_path(local_run, tmp_path):
    root, best, config, teacher_parameters = local_run
    card = write_card(best.relative_to(root / "work"), repo_id="org/nat", distilled_by="../shared/models/teacher",
                      distill_beams=4, teacher_name="ar-teacher-multi30k-en-de",
                      teacher_data="bentrevett/multi30k", copy_to=tmp_path / "card.md",
                      note="the first 1000 of a 2000-update recipe")
    text = card.content
    assert (tmp_path / "card.md").read_text() == (best / "README.md").read_text() == text
    # the note ends the Training section
    training = text.split("## Training\n", 1)[1].split("\n## ", 1)[0]
    assert training.rstrip().endswith("Note: the first 1000 of a 2000-update recipe")
    # no machine-local path: no "../", no absolute path, nothing of this machine's directories
    assert "../" not in text and str(root) not in text and "shared/" not in text
    assert ABSOLUTE_PATH.search(text) is None, ABSOLUTE_PATH.search(text)
    # the dataset, by its Hub name, with the local -> Hub split names and the sizes counted in the files
    metadata = card.data.to_dict()
    assert metadata["datasets"] == ["bentrevett/multi30k"]
    assert {entry["dataset"]["split"]: entry["dataset"]["type"] for entry in metadata["model-index"][0]["results"]} \
        == {"validation": "bentrevett/multi30k", "test": "bentrevett/multi30k"}
    assert "Multi30k ([`bentrevett/multi30k`](https://huggingface.co/datasets/bentrevett/multi30k)), en→de" in text
    assert "| train | train | 30 | training |" in text and "| val | validation | 7 |" in text
    assert "| test_2016_flickr | test | 5 | test |" in text and "Elliott" in text
    # distilled, by the teacher, described by architecture, size, data and its measured BLEU
    assert "the teacher's translations of the train split's sources" in text and "with 4 beams" in text
    assert ("Teacher (distillation and initialisation): `ar-teacher-multi30k-en-de` (not on the Hub): an "
            "autoregressive Transformer (transformers `MarianMTModel`), "
            f"{teacher_parameters / 1e6:.1f}M parameters, d_model 32, 2 encoder + 1 decoder layers, 4 heads, FFN 64, "
            "vocabulary 40; trained on Multi30k") in text
    assert "sacreBLEU test_2016_flickr 12.35 (greedy) / 13.46 (beam 4)." in text
    assert "Initialisation: the weights of the teacher" in text and "Vocabulary: the teacher's tokenizer." in text
    assert "the `length_predictor` of the method and any vocabulary rows beyond the AR model's start fresh" in text
    # reproduction: placeholders a stranger fills, and a config that `load_config` expands back to the run's paths
    assert ("nat-hf distill <teacher dir> --data-dir <multi30k text dir> --output-dir <multi30k text dir>/distill "
            "--splits train --source-lang en --target-lang de --num-beams 4") in text
    assert "NAT_HF_DATA_DIR=<multi30k text dir> NAT_HF_TEACHER=<teacher dir> nat-hf train train_config.yaml" in text
    block = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert block["data"]["data_dir"] == "${NAT_HF_DATA_DIR}/distill" and block["model"]["init_from_ar"] == \
        "${NAT_HF_TEACHER}" and block["run"]["output_dir"] == "runs/x"
    (tmp_path / "train_config.yaml").write_text(yaml.safe_dump(block))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("NAT_HF_DATA_DIR", config["data"]["eval_data_dir"])
        env.setenv("NAT_HF_TEACHER", config["model"]["init_from_ar"])
        expanded = load_config(tmp_path / "train_config.yaml").to_dict()
    assert {key: expanded["data"][key] for key in ("data_dir", "eval_data_dir", "tokenizer")} == \
        {key: config["data"][key] for key in ("data_dir", "eval_data_dir", "tokenizer")}
    # the upload's train_config.yaml carries the same placeholders, not the local paths
    staged = stage_upload(best, tmp_path / "staging")
    assert "train_config.yaml" in staged
    uploaded = (tmp_path / "staging" / "train_config.yaml").read_text()
    assert "../" not in uploaded and yaml.safe_load(uploaded)["data"]["data_dir"] == "${NAT_HF_DATA_DIR}/distill"


def test_card_refuses_a_local_path_and_explains_missing_distillation_facts(local_run):
    root, best, _, _ = local_run
    absolute_teacher = str((root / "shared" / "models" / "teacher").resolve())
    for option in ("teacher_name", "data_name", "teacher_data"):  # a "name" that is a path
        with pytest.raises(ValueError, match="is a local path, not a public name"):
            write_card(best, distilled_by=absolute_teacher, distill_beams=4, **{option: absolute_teacher})
    # the last guard: a card text holding a path of the config, as given or resolved, is refused
    assert local_path_leaks(f"from `{absolute_teacher}`", ["../shared/models/teacher", "runs/x"]) == [absolute_teacher]
    assert local_path_leaks("run.output_dir: runs/x", ["runs/x"]) == []
    with pytest.raises(ValueError, match="--distill-beams"):
        write_card(best, distilled_by="../shared/models/teacher")
    with pytest.raises(ValueError, match="only applies with --distilled-by"):
        write_card(best, distill_beams=4)
    # without --distilled-by, an AR initialisation is still described (not as a distillation teacher)
    text = write_card(best).content
    assert "AR model of the initialisation: an autoregressive Transformer (transformers `MarianMTModel`)" in text
    assert "no distillation report" in text and "../" not in text
    assert "NAT_HF_DATA_DIR=<multi30k text dir> NAT_HF_TEACHER=<AR model dir> nat-hf train" in text
    # a Hub teacher other than the AR initialisation: named by its id, each with its own placeholder
    text = write_card(best, distilled_by="org/big-teacher", distill_beams=5).content
    assert "Teacher (distillation): [`org/big-teacher`](https://huggingface.co/org/big-teacher)." in text
    assert "nat-hf distill org/big-teacher --data-dir <multi30k text dir>" in text and "--num-beams 5" in text
    assert "Initialisation: the weights of the AR model below" in text and "NAT_HF_TEACHER=<AR model dir>" in text
    assert "../" not in text


def test_distill_report_names_the_teacher(tmp_path):
    (tmp_path / "distill_report.json").write_text(json.dumps({"teacher": "org/teacher", "num_beams": 5,
                                                              "max_new_tokens": 100}))
    assert find_distillation({"data_dir": str(tmp_path)}, None, None) == Distillation("org/teacher", 5, 100)
    assert find_distillation({"data_dir": str(tmp_path)}, "other/teacher", None) == \
        Distillation("other/teacher", 5, 100)
    assert find_distillation({"data_dir": str(tmp_path / "none")}, None, None) is None


def test_data_identity_hub_dataset_named_dataset_and_unknown_local_text(tmp_path):
    hub = {"dataset_name": "bentrevett/multi30k", "valid_split": "validation", "test_splits": ["test"]}
    info = identify_data(hub)
    assert (info.hub_id, info.local) == ("bentrevett/multi30k", False)
    section = data_section(hub, info, None)  # sizes of a Hub dataset's splits: from the table (no files here)
    assert "| validation | validation | 1014 | validation (checkpoint selection) |" in section
    assert "| test | test | 1000 | test |" in section and "| train | train | 29000 | training |" in section
    mine = {"data_dir": str(write_toy_corpus(tmp_path / "corpus", (("train", 4), ("val", 3))))}
    unknown = identify_data(mine)
    assert unknown == DataInfo(None, "Local parallel text (not published)", True)
    section = data_section(mine, unknown, None)
    assert "| train | – | 4 | training |" in section and "reference translations" in section
    named = identify_data(mine, "someone/corpus")
    assert named.hub_id == "someone/corpus" and "[`someone/corpus`]" in named.name()
    assert identify_data(mine, "my corpus").name() == "my corpus"  # a name that is no Hub id: not linked
    found = placeholders({"data": mine}, unknown)
    assert with_placeholders({"data": mine}, found) == {"data": {"data_dir": "${NAT_HF_DATA_DIR}"}}
    assert found[0].hint == "<data dir>"


def test_card_and_push_of_a_missing_or_incomplete_directory_are_usage_errors(tmp_path, capsys):
    from nat_hf.hub import main_card, main_push

    for main, argv, message in ((main_card, [str(tmp_path / "none")], "no config.json"),
                                (main_push, [str(tmp_path / "none"), "org/name", "--dry-run"], "not found"),
                                (main_push, [str(tmp_path), "org/name", "--dry-run"], "lacks")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("objective", sorted(METHODS))
def test_card_describes_each_objective_its_decoding_and_method_options(tmp_path, objective):
    from nat_hf.hub import describe_objective

    run = tmp_path / "run"
    torch.manual_seed(0)
    model = NATForConditionalGeneration(NATConfig(**objective_config_kwargs(objective)))
    changed = non_default_options(model)
    for name, value in changed.items():
        setattr(model.generation_config, name, value)
    model.save_pretrained(run / "best")
    defaults = {name: getattr(model.generation_config, name) for name in model.nat_method.option_defaults()}
    assert defaults  # every method has an option to show (changed ones: read from the saved file)
    # results.json as `nat-hf train` writes it: the final decoding as a mapping
    decoding = dict(defaults)
    (run / "results.json").write_text(json.dumps({
        "steps": 10, "train_seconds": 60.0, "best_step": 10, "best_valid_bleu": 1.0, "val_bleu": 3.5, "val_chrf": 20.0,
        "family": "nat", "decoding": decoding}))
    text = write_card(run / "best").content
    assert f"Objective `{objective}`: {describe_objective(objective)}." in text
    method = METHODS[objective]
    assert method.summary and method.paper and f"{method.summary} ({method.paper})" in text
    listed = ", ".join(f"`{name}={value}`" for name, value in defaults.items())
    assert f"the defaults saved in `generation_config.json`: {listed}." in text
    assert f"| default decoding | {listed} |" in text
    assert "num_iterations" not in text or "num_iterations" in defaults  # nothing of another method
    row = ", ".join(f"{name}={value}" for name, value in decoding.items())
    assert f"| this model | val | 3.50 | 20.00 | {row} |" in text
    method_options = json.loads((run / "best" / "config.json").read_text())["method_options"]  # as saved
    if method_options:
        assert "Method options (`" + objective + "`, `NATConfig.method_options`): " + ", ".join(
            f"`{name}={value}`" for name, value in method_options.items()) + "." in text


def test_card_reads_the_decoding_of_old_results_files(tmp_path):
    """results.json written before the methods had their own options: num_iterations/length_beam at the top."""
    run = tmp_path / "run"
    NATForConditionalGeneration(NATConfig(**TINY)).save_pretrained(run / "best")
    (run / "results.json").write_text(json.dumps({
        "steps": 10, "train_seconds": 60.0, "best_step": 10, "best_valid_bleu": 1.0, "val_bleu": 3.5, "val_chrf": 20.0,
        "family": "nat", "num_iterations": 10, "length_beam": 5, "world_size": 1}))
    text = write_card(run / "best").content
    assert "| this model | val | 3.50 | 20.00 | num_iterations=10, length_beam=5 |" in text
    assert "`num_iterations=10`, `length_beam=5`, `decoding_strategy=mask_predict`" in text


def test_an_objective_without_a_card_text_is_described_by_its_method_docstring(monkeypatch):
    from nat_hf.hub import describe_objective
    from nat_hf.method_glat import GLATMethod

    class Novel(GLATMethod):
        """A novel method (Someone et al., 2030).

        More detail that the card leaves out."""

        summary = ""  # no card text declared

    monkeypatch.setitem(METHODS, "novel", Novel())
    assert describe_objective("novel") == "A novel method (Someone et al., 2030)"
    assert describe_objective("unknown") == "the `unknown` objective of nat-hf"
