"""`nat_hf.inference`: loading a translator (clear errors for a missing model or tokenizer), blank sources,
over-long sources, and streaming translation in input order."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import GenerationConfig

from nat_hf import NATConfig, NATForConditionalGeneration
from nat_hf.inference import (
    ModelNotFoundError,
    TranslationResult,
    load_translator,
    translate_lines,
    translate_texts,
)
from nat_hf.tokenization import config_kwargs_from_tokenizer, train_tokenizer

from .conftest import write_toy_corpus

MAX_SOURCE = 16  # tokens; "one " * 20 is longer
OVER_LONG = " ".join(["one"] * 20)  # 20 tokens and end-of-sentence


def save_toy_translator(root: Path) -> Path:
    """A tiny random NAT model with a BPE tokenizer trained on the toy corpus, saved in `root / "model"`."""
    corpus = write_toy_corpus(root / "corpus", sizes=(("train", 300), ("val", 20), ("test", 5)))
    tokenizer = train_tokenizer(files=[corpus / "train.en", corpus / "train.de"], vocab_size=100, algorithm="bpe",
                                model_max_length=MAX_SOURCE)
    config = NATConfig(**config_kwargs_from_tokenizer(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                       encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                       max_source_positions=MAX_SOURCE, max_target_positions=32, max_length_offset=8, dropout=0.0)
    torch.manual_seed(0)
    directory = root / "model"
    NATForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def toy_translator(tmp_path_factory):
    directory = save_toy_translator(tmp_path_factory.mktemp("inference"))
    model, tokenizer = load_translator(directory)
    return directory, model, tokenizer


class EchoTranslator(torch.nn.Module):
    """A stand-in model whose "translation" is its source, recording every batch it is given: outputs must then
    equal the inputs, in input order."""

    nat_method = "echo"  # counts as a NAT model: no output cap is added

    def __init__(self, tokenizer, max_source_positions: int = MAX_SOURCE):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_source_positions=max_source_positions, pad_token_id=tokenizer.pad_token_id)
        self.generation_config = GenerationConfig()
        self.batches: list[torch.Tensor] = []

    def generate(self, input_ids, attention_mask, **kwargs):
        self.batches.append(input_ids.clone())
        return input_ids


def test_missing_model_directory_is_one_clear_typed_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match=f"^model directory {missing} not found$"):
        load_translator(missing)
    with pytest.raises(FileNotFoundError):  # what callers that do not know nat_hf's error type catch
        load_translator(missing)
    # a name that could be a Hub repo id: not found locally, and the (offline) Hub cannot provide it
    with pytest.raises(ModelNotFoundError, match="model no-such-org/no-such-model not found: no such directory, "
                       "and loading it as a Hub repo id failed"):
        load_translator("no-such-org/no-such-model")


def test_model_without_tokenizer_or_config_names_the_missing_files(tmp_path, toy_translator):
    _, model, tokenizer = toy_translator
    model.save_pretrained(tmp_path / "no-tokenizer")
    with pytest.raises(ModelNotFoundError, match=r"has no tokenizer: tokenizer\.json and tokenizer_config\.json are "
                       "missing"):
        load_translator(tmp_path / "no-tokenizer")
    tokenizer.save_pretrained(tmp_path / "no-config")
    with pytest.raises(ModelNotFoundError, match=r"no-config has no config\.json: it is not a saved model"):
        load_translator(tmp_path / "no-config")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ModelNotFoundError, match="is a file, not a model directory"):
        load_translator(tmp_path / "a-file")


def test_blank_sources_translate_to_empty_strings_without_running_the_model(toy_translator, monkeypatch):
    _, model, tokenizer = toy_translator
    # the cause: the tokenizer turns spaces into word-boundary tokens, from which a model makes words
    assert tokenizer.convert_ids_to_tokens(tokenizer("   ")["input_ids"]) == ["▁", "▁", "▁", "</s>"]
    alone = translate_texts(model, tokenizer, ["three one two", "five"], batch_size=1)
    rows = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda **batch: rows.extend(batch["input_ids"].tolist())
                        or generate(**batch))
    translations = translate_texts(model, tokenizer, ["three one two", "", "   ", "\t \t", "five"], batch_size=1)
    assert translations == [alone[0], "", "", "", alone[1]]
    assert len(rows) == 2  # only the two real sentences reached the model
    rows.clear()
    assert translate_texts(model, tokenizer, ["", "  "]) == ["", ""] and rows == []


def test_over_long_source_raises_naming_it_before_anything_is_translated(toy_translator, monkeypatch):
    _, model, tokenizer = toy_translator
    calls = []
    monkeypatch.setattr(model, "generate", lambda **batch: calls.append(batch))
    with pytest.raises(ValueError, match=r"source 2 \(0-based\): source has 21 tokens but the model accepts at most "
                       "16; pass truncation=True"):
        translate_texts(model, tokenizer, ["one", "two", OVER_LONG])
    assert calls == []


def test_bad_decoding_option_fails_before_any_input_is_read(toy_translator):
    _, model, tokenizer = toy_translator
    read = []

    def sources():
        for text in ("one", "two"):
            read.append(text)
            yield text

    with pytest.raises(ValueError, match="decoding_strategy"):
        translate_lines(model, tokenizer, sources(), decoding_strategy="nonsense")
    with pytest.raises(ValueError, match="num_beams"):
        translate_lines(model, tokenizer, sources(), num_beams=4)
    with pytest.raises(ValueError, match="chunk_size"):
        translate_lines(model, tokenizer, sources(), chunk_size=0)
    assert read == []


def test_translate_lines_streams_chunks_in_input_order(toy_translator):
    _, _, tokenizer = toy_translator
    echo = EchoTranslator(tokenizer)
    texts = ["three one two seven", "five", "", "nine eight", "one two", "six"]
    read = []

    def sources():
        for text in texts:
            read.append(text)
            yield text

    results = translate_lines(echo, tokenizer, sources(), batch_size=2, chunk_size=3)
    assert read == []  # nothing is read before the first result is asked for
    first = next(results)
    assert first == TranslationResult("three one two seven") and len(read) == 3  # one chunk read, not the whole input
    rest = list(results)
    assert [result.text for result in [first, *rest]] == texts
    # within a chunk (the blank source skipped), batches are length-sorted, shortest first
    assert [tokenizer.batch_decode(batch, skip_special_tokens=True) for batch in echo.batches] == [
        ["five", "three one two seven"], ["six", "nine eight"], ["one two"]]


def test_translate_lines_reports_over_long_sources_or_cuts_them(toy_translator):
    _, _, tokenizer = toy_translator
    echo = EchoTranslator(tokenizer)
    texts = ["one two", OVER_LONG, "three"]
    results = list(translate_lines(echo, tokenizer, texts, chunk_size=10))
    assert results[0] == TranslationResult("one two") and results[2] == TranslationResult("three")
    assert results[1] == TranslationResult("", error="source has 21 tokens but the model accepts at most 16 "
                                           "(not translated)")
    assert sum(len(batch) for batch in echo.batches) == 2
    cut = list(translate_lines(echo, tokenizer, texts, truncation=True))
    assert cut[1] == TranslationResult(" ".join(["one"] * 15), truncated_from=21)  # 15 words and end-of-sentence
    assert echo.batches[-1].shape[1] == MAX_SOURCE
    assert [result.text for result in cut[::2]] == ["one two", "three"]


def test_progress_counts_every_source(toy_translator):
    _, _, tokenizer = toy_translator
    counted = []
    list(translate_lines(EchoTranslator(tokenizer), tokenizer, ["one", "", OVER_LONG, "two", "three"], batch_size=2,
                         chunk_size=4, progress=counted.append))
    assert sum(counted) == 5


def test_streamed_translations_match_translate_texts(toy_translator):
    _, model, tokenizer = toy_translator
    texts = ["three one two", "seven", "five four nine", "  ", "two"]
    expected = translate_texts(model, tokenizer, texts, batch_size=1, num_iterations=2)
    streamed = [result.text for result in translate_lines(model, tokenizer, iter(texts), batch_size=1, chunk_size=2,
                                                          num_iterations=2)]
    assert streamed == expected and expected[3] == ""


def test_generation_config_objects_are_accepted_and_the_callers_options_are_untouched(toy_translator):
    from nat_hf.inference import check_generate_kwargs

    _, model, tokenizer = toy_translator
    sources = ["three one two", "seven"]
    config = GenerationConfig(num_iterations=2, length_beam=1)
    assert translate_texts(model, tokenizer, sources, generation_config=config) == translate_texts(
        model, tokenizer, sources, num_iterations=2, length_beam=1)
    options = {"generation_config": config, "num_iterations": 3, "max_new_tokens": 4}
    check_generate_kwargs(model, options)  # validates a copy
    assert options == {"generation_config": config, "num_iterations": 3, "max_new_tokens": 4}
