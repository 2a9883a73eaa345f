import pytest
from transformers import AutoTokenizer

from nat_hf import NATConfig
from nat_hf.tokenization import config_kwargs_from_tokenizer, train_tokenizer

SENTENCES = ["A man is riding a bike.", "Ein Mann fährt Fahrrad.", "Two dogs play in the snow.",
             "Zwei Hunde spielen im Schnee."] * 50


@pytest.mark.parametrize("algorithm", ["unigram", "bpe"])
def test_trained_tokenizer_has_nat_special_tokens_and_round_trips(tmp_path, algorithm):
    tokenizer = train_tokenizer(texts=SENTENCES, vocab_size=120, algorithm=algorithm, model_max_length=16)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["<pad>", "</s>", "<unk>", "<mask>", "<blank>"]
    encoded = tokenizer(["A man is riding a bike.", "Zwei Hunde."], padding=True)
    assert encoded["input_ids"][0][-1] == 1  # closed by </s>
    assert tokenizer.batch_decode(encoded["input_ids"], skip_special_tokens=True) == [
        "A man is riding a bike.", "Zwei Hunde."]
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(SENTENCES[:4])["input_ids"] == tokenizer(SENTENCES[:4])["input_ids"]
    assert config_kwargs_from_tokenizer(reloaded) == config_kwargs_from_tokenizer(tokenizer)
    truncated = reloaded("a " * 100, truncation=True)["input_ids"]
    assert len(truncated) == 16 and truncated[-1] == 1  # truncation keeps end-of-sentence


def test_config_kwargs_build_a_matching_config(tmp_path):
    files = []
    for index, chunk in enumerate((SENTENCES[::2], SENTENCES[1::2])):
        path = tmp_path / f"train.{index}"
        path.write_text("\n".join(chunk) + "\n")
        files.append(path)
    tokenizer = train_tokenizer(files=files, vocab_size=100, with_blank=False)
    kwargs = config_kwargs_from_tokenizer(tokenizer)
    assert kwargs["blank_token_id"] is None
    config = NATConfig(**kwargs)
    assert (config.vocab_size, config.mask_token_id) == (len(tokenizer), tokenizer.mask_token_id)


def test_bad_tokenizer_requests_raise():
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_tokenizer(files=["missing.txt"])
    with pytest.raises(ValueError, match="algorithm"):
        train_tokenizer(texts=SENTENCES, algorithm="wordpiece")
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(texts=SENTENCES, vocab_size=5)
    with pytest.raises(ValueError, match="files"):
        train_tokenizer()
