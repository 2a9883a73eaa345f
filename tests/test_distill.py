"""Sequence-level distillation with a tiny randomly initialised Marian teacher."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import MarianConfig, MarianMTModel

from nat_hf.distill import DistillError, distill
from nat_hf.tokenization import train_tokenizer


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    from .conftest import write_toy_corpus

    root = tmp_path_factory.mktemp("teacher")
    corpus = write_toy_corpus(root / "corpus", sizes=(("train", 300), ("val", 30)))
    tokenizer = train_tokenizer(files=[corpus / "train.en", corpus / "train.de"], vocab_size=100, algorithm="bpe")
    torch.manual_seed(0)
    config = MarianConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=0, eos_token_id=1,
                          decoder_start_token_id=0, forced_eos_token_id=1)
    directory = root / "teacher"
    MarianMTModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return corpus, directory


def test_distill_writes_aligned_output_in_the_input_layout(tmp_path, teacher_dir):
    corpus, teacher = teacher_dir
    out = tmp_path / "distilled"
    report = distill(str(teacher), corpus, out, splits=["train"], num_beams=2, max_new_tokens=12, batch_size=32,
                     shard_size=100, bleu_split="val")
    sources = (corpus / "train.en").read_text().splitlines()
    targets = (out / "train.de").read_text().splitlines()
    assert (out / "train.en").read_text() == (corpus / "train.en").read_text()
    assert len(targets) == len(sources) == 300
    assert all(line.strip() for line in targets)  # empty teacher outputs were replaced, and listed
    replaced = report["splits"]["train"]["empty_outputs_replaced_by_reference"]
    references = (corpus / "train.de").read_text().splitlines()
    assert all(targets[line - 1] == references[line - 1] for line in replaced)
    # the teacher's score on val is sacreBLEU / chrF of its own translations, one sentence at a time
    import sacrebleu
    from transformers import AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(teacher), MarianMTModel.from_pretrained(teacher).eval()
    hypotheses = []
    for source in (corpus / "val.en").read_text().splitlines():
        with torch.no_grad():
            output = model.generate(**tokenizer([source], return_tensors="pt"), num_beams=2, max_new_tokens=12)
        hypotheses.append(tokenizer.decode(output[0], skip_special_tokens=True))
    references = [(corpus / "val.de").read_text().splitlines()]
    assert report["teacher_bleu"]["split"] == "val"
    assert report["teacher_bleu"]["bleu"] == round(sacrebleu.corpus_bleu(hypotheses, references).score, 2)
    assert report["teacher_bleu"]["chrf"] == round(sacrebleu.corpus_chrf(hypotheses, references).score, 2)
    assert json.loads((out / "distill_report.json").read_text())["num_beams"] == 2


def test_killed_distillation_restarts_without_redoing_shards_and_gives_the_same_file(tmp_path, teacher_dir):
    corpus, teacher = teacher_dir
    options = ["--splits", "train", "--num-beams", "2", "--max-new-tokens", "12", "--batch-size", "10",
               "--shard-size", "10", "--threads", "1"]
    whole = tmp_path / "whole"
    distill(str(teacher), corpus, whole, num_beams=2, max_new_tokens=12, batch_size=10, shard_size=10)

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "nat_hf.distill", str(teacher), "--data-dir", str(corpus), "--output-dir",
               str(killed), *options]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard_dir = killed / ".shards" / "train"
    deadline = time.time() + 180
    while len(list(shard_dir.glob("*.txt"))) < 2 and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_before_restart = sorted(path.name for path in shard_dir.glob("*.txt"))
    assert 2 <= len(finished_before_restart) < 30, "kill the run midway"
    assert not (killed / "train.de").exists()
    stamps = {name: (shard_dir / name).stat().st_mtime_ns for name in finished_before_restart}

    subprocess.run(command, check=True, capture_output=True, timeout=300)
    assert (killed / "train.de").read_text() == (whole / "train.de").read_text()
    assert {name: (shard_dir / name).stat().st_mtime_ns for name in finished_before_restart} == stamps  # not redone


def test_restart_with_other_settings_is_refused(tmp_path, teacher_dir):
    corpus, teacher = teacher_dir
    out = tmp_path / "out"
    distill(str(teacher), corpus, out, num_beams=1, max_new_tokens=8, shard_size=100)
    with pytest.raises(DistillError, match="num_beams"):
        distill(str(teacher), corpus, out, num_beams=3, max_new_tokens=8, shard_size=100)
