import pytest
import torch

from nat_hf.data import DataCollatorForNAT, DataError, load_split, read_lines, read_parallel_text, token_budget_batches


def test_token_budget_batches_cover_every_example_once_within_the_budget():
    lengths = [3, 17, 8, 8, 25, 1, 12, 9, 30, 4] * 7
    batches = token_budget_batches(lengths, max_tokens=60, seed=3)
    flat = sorted(index for batch in batches for index in batch)
    assert flat == list(range(len(lengths)))
    for batch in batches:
        assert max(lengths[i] for i in batch) * len(batch) <= 60
    assert batches == token_budget_batches(lengths, max_tokens=60, seed=3)  # same seed, same batches
    assert batches != token_budget_batches(lengths, max_tokens=60, seed=4)
    with pytest.raises(DataError, match="longer than max_tokens"):
        token_budget_batches([10, 70], max_tokens=60, seed=0)


def test_collator_right_pads_and_accepts_ignored_labels():
    collator = DataCollatorForNAT(pad_token_id=0)
    batch = collator([{"input_ids": [5, 6, 1], "labels": [7, 1, -100]},
                      {"input_ids": [8, 1], "labels": [9, 10, 11, 1]}])
    assert batch["input_ids"].tolist() == [[5, 6, 1], [8, 1, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[7, 1, 0, 0], [9, 10, 11, 1]]
    assert batch["labels"].dtype == torch.long


def test_parallel_text_errors_name_the_problem(tmp_path):
    (tmp_path / "train.en").write_text("a\nb\nc\n")
    (tmp_path / "train.de").write_text("x\ny\n")
    with pytest.raises(DataError, match="not aligned"):
        read_parallel_text(tmp_path, "train", "en", "de")
    (tmp_path / "train.de").write_text("x\n\nz\n")
    with pytest.raises(DataError, match="empty line.*line 2"):
        read_parallel_text(tmp_path, "train", "en", "de")
    with pytest.raises(DataError, match="missing data file.*val.en"):
        read_parallel_text(tmp_path, "val", "en", "de")


def test_load_split_reads_text_files_and_jsonl(toy_corpus, tmp_path):
    split = load_split("val", "en", "de", data_dir=toy_corpus)
    assert split.column_names == ["source", "target"] and len(split) == 40
    jsonl = tmp_path / "j"
    jsonl.mkdir()
    (jsonl / "train.jsonl").write_text('{"translation": {"en": "one", "de": "eins"}}\n{"en": "two", "de": "zwei"}\n')
    pairs = load_split("train", "en", "de", data_dir=jsonl)
    assert pairs["source"] == ["one", "two"] and pairs["target"] == ["eins", "zwei"]
    (jsonl / "val.jsonl").write_text('{"en": "one"}\n')
    with pytest.raises(DataError, match="record 0"):
        load_split("val", "en", "de", data_dir=jsonl)


def test_non_utf8_data_names_the_file_and_line(tmp_path):
    (tmp_path / "train.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "train.de").write_bytes(b"eins\nzwei\n" + b"dr\xe9i\n")  # Latin-1 e-acute
    with pytest.raises(DataError, match=r"train.de is not UTF-8 text: line 3 \(byte 12\)"):
        read_parallel_text(tmp_path, "train", "en", "de")
    long_file = tmp_path / "long.de"  # past the text reader's first chunk, the line is still the file's
    long_file.write_bytes(b"".join(b"line %d\n" % number for number in range(5000)) + b"\xff\n")
    with pytest.raises(DataError, match="long.de is not UTF-8 text: line 5001"):
        read_lines(long_file)


def test_jsonl_errors_name_the_file_and_line(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"en": "one", "de": "eins"}\n\n{"en": "two", "de": \n')
    with pytest.raises(DataError, match=r"train.jsonl line 3 is not JSON"):
        load_split("train", "en", "de", data_dir=tmp_path)
    (tmp_path / "train.jsonl").write_text('{"en": "one", "de": "eins"}\n["two", "zwei"]\n')
    with pytest.raises(DataError, match=r"train.jsonl line 2 is not a JSON object"):
        load_split("train", "en", "de", data_dir=tmp_path)
    (tmp_path / "train.jsonl").write_bytes(b'{"en": "one", "de": "\xfcber"}\n')
    with pytest.raises(DataError, match=r"train.jsonl is not UTF-8 text: line 1"):
        load_split("train", "en", "de", data_dir=tmp_path)
