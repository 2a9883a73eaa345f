"""The `nat-translation` pipeline: decoding options reach `generate` or fail up front, blank sources, and the
pipeline file's imports (it is shipped as remote code)."""

import ast
from dataclasses import dataclass, field

import pytest
import torch
from transformers import pipeline

from nat_hf import NATConfig, NATForConditionalGeneration, pipeline_nat
from nat_hf.method_glat import GLATMethod, OnePassOptions
from nat_hf.methods import METHODS, decoding_option_help

from .test_inference import OVER_LONG, save_toy_translator
from .test_remote_code import objective_config_kwargs


@dataclass
class FakeOptions(OnePassOptions):
    """GLAT's options and a float one no real method has."""

    fake_exponent: float = field(default=1.0, metadata={"help": "a float option of the fake method"})


class FakeMethod(GLATMethod):
    """A method registered by a test only."""

    name = "fake"
    Options = FakeOptions


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    directory = save_toy_translator(tmp_path_factory.mktemp("pipeline"))
    return pipeline("nat-translation", model=str(directory), trust_remote_code=True)


@pytest.fixture
def generate_calls(translator, monkeypatch):
    """The keyword options and source rows of every `generate` call the pipeline makes."""
    calls = []
    generate = translator.model.generate

    def recording(**kwargs):
        calls.append({"rows": kwargs["input_ids"].tolist(),
                      **{k: v for k, v in kwargs.items() if k not in ("input_ids", "attention_mask")}})
        return generate(**kwargs)

    monkeypatch.setattr(translator.model, "generate", recording)
    return calls


@pytest.mark.parametrize(("options", "message"), [
    ({"num_beams": 4}, "num_beams"),  # the model's `_generation_options` words the messages; they name the option
    ({"decoding_strategy": "nonsense"}, "decoding_strategy"),
    ({"length_beam": 0}, "length_beam"),
    ({"no_such_option": 1}, "no_such_option"),
])
def test_invalid_options_raise_before_any_sentence_is_translated(translator, generate_calls, options, message):
    for inputs in ("three one", ["three one", "five"], ["  "]):
        with pytest.raises(ValueError, match=message):
            translator(inputs, batch_size=2, **options)
    assert generate_calls == []
    with pytest.raises(ValueError, match=message):  # also when given to pipeline() itself
        pipeline("nat-translation", model=translator.model, tokenizer=translator.tokenizer, **options)


def test_decoding_options_are_forwarded_to_generate(translator, generate_calls):
    output = translator("three one two", num_iterations=2, length_beam=2, decoding_strategy="mask_predict",
                        max_new_tokens=5)
    assert generate_calls[0]["num_iterations"] == 2 and generate_calls[0]["length_beam"] == 2
    assert generate_calls[0]["decoding_strategy"] == "mask_predict" and generate_calls[0]["max_new_tokens"] == 5
    assert len(translator.tokenizer(output[0]["translation_text"])["input_ids"]) <= 5
    returned = translator("three one two", num_iterations=2, length_beam=2, return_dict_in_generate=True)
    assert returned == translator("three one two", num_iterations=2, length_beam=2)


def test_options_fixed_at_construction_are_checked_with_call_options(translator):
    fixed = pipeline("nat-translation", model=translator.model, tokenizer=translator.tokenizer, num_iterations=2)
    assert fixed("three one") == translator("three one", num_iterations=2)
    with pytest.raises(ValueError, match="num_beams"):
        fixed("three one", num_beams=3)


def test_blank_sources_give_empty_translations_without_running_the_model(translator, generate_calls):
    alone = [translator(text, num_iterations=2)[0]["translation_text"] for text in ("three one two", "five")]
    generate_calls.clear()
    outputs = translator(["three one two", "", "   ", "five", "\t"], batch_size=2, num_iterations=2)
    assert [output["translation_text"] for output in outputs] == [alone[0], "", "", alone[1], ""]
    assert sum(len(call["rows"]) for call in generate_calls) == 2
    generate_calls.clear()
    assert translator("   ") == [{"translation_text": ""}] and translator([]) == [] and generate_calls == []


def test_truncation_and_over_long_sources(translator):
    with pytest.raises(ValueError, match="max_source_positions"):
        translator(OVER_LONG)
    assert translator(OVER_LONG, truncation=True) == translator(" ".join(["one"] * 15))


def test_pipeline_file_imports_only_transformers():
    """It is copied beside every saved model and loaded as remote code, where nat_hf may not be installed."""
    tree = ast.parse(open(pipeline_nat.__file__, encoding="utf-8").read())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module.split(".")[0] if node.level == 0 else "." for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom)}
    assert modules == {"transformers"}


@pytest.mark.parametrize("objective", sorted(METHODS))
def test_every_method_takes_its_options_and_refuses_another_methods(translator, objective, tmp_path):
    """Each method's options (defaults given explicitly, a float one as an int) decode like no option at all;
    an option only another method has is a ValueError naming it, raised by generate's check before decoding."""
    config = translator.model.config
    base = {key: getattr(config, key) for key in ("vocab_size", "pad_token_id", "eos_token_id", "unk_token_id",
                                                  "mask_token_id", "d_model", "encoder_layers", "decoder_layers",
                                                  "encoder_attention_heads", "decoder_attention_heads",
                                                  "encoder_ffn_dim", "decoder_ffn_dim", "max_source_positions",
                                                  "max_target_positions", "max_length_offset")}
    torch.manual_seed(0)
    model = NATForConditionalGeneration(NATConfig(**objective_config_kwargs(objective, base))).eval()
    model.save_pretrained(tmp_path / objective)
    translator.tokenizer.save_pretrained(tmp_path / objective)
    pipe = pipeline("nat-translation", model=str(tmp_path / objective), trust_remote_code=True)
    given = {name: int(value) if isinstance(value, float) and value.is_integer() else value
             for name, value in METHODS[objective].option_defaults().items()}
    assert pipe(["three one two", "five"], **given) == pipe(["three one two", "five"])
    foreign = sorted(set(decoding_option_help()) - set(given))
    for name in foreign:
        with pytest.raises(ValueError, match=rf"\['{name}'\] do not apply to method '{objective}'"):
            pipe("three one two", **{name: 1})


def test_an_option_of_a_method_registered_later_is_refused_by_name(translator, monkeypatch):
    monkeypatch.setitem(METHODS, "fake", FakeMethod())
    with pytest.raises(ValueError, match=r"\['fake_exponent'\] do not apply to method 'cmlm'"):
        translator("three one", fake_exponent=2.0)


def test_an_autoregressive_model_decodes_speculatively_through_the_pipeline(translator, tmp_path):
    """`pipeline("nat-translation", model=AR)` with `speculative_kwargs(ar, nat)`: the AR model's greedy translations,
    drafted by the NAT model."""
    from transformers import MarianConfig, MarianMTModel

    from nat_hf.speculative import SpeculativeStats, speculative_kwargs

    tokenizer = translator.tokenizer
    torch.manual_seed(0)
    MarianMTModel(MarianConfig(vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
                               encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                               decoder_ffn_dim=32, max_position_embeddings=32, pad_token_id=0, eos_token_id=1,
                               decoder_start_token_id=0)).save_pretrained(tmp_path / "ar")
    tokenizer.save_pretrained(tmp_path / "ar")
    ar = pipeline("nat-translation", model=str(tmp_path / "ar"))
    sentences = ["three one two", "five", "four four one two"]
    greedy = ar(sentences, max_new_tokens=12)
    stats = SpeculativeStats()
    drafted = ar(sentences, max_new_tokens=12, **speculative_kwargs(ar.model, translator.model, draft_size=3,
                                                                   stats=stats))
    assert drafted == greedy and len(stats.ar_forward_passes) == 3


def test_a_list_is_batched_by_token_length_and_answered_in_input_order(translator, generate_calls):
    sentences = ["one two three four five six seven", "two", "three four five six", "four five", "six"]
    alone = [translator(text, num_iterations=2)[0]["translation_text"] for text in sentences]
    generate_calls.clear()
    outputs = translator(sentences, batch_size=2, num_iterations=2)
    assert [output["translation_text"] for output in outputs] == alone
    lengths = [len(translator.tokenizer(text)["input_ids"]) for text in sentences]
    pad = translator.tokenizer.pad_token_id
    batches = [sorted(sum(token != pad for token in row) for row in call["rows"]) for call in generate_calls]
    assert batches == [sorted(lengths)[0:2], sorted(lengths)[2:4], sorted(lengths)[4:]]
