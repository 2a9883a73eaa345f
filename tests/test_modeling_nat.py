import pytest
import torch
from transformers import AutoModel, AutoModelForSeq2SeqLM, GenerationConfig

from nat_hf import NATConfig, NATForConditionalGeneration, NATModel
from nat_hf.method_base import length_classes

from .conftest import TINY


def strip(row: list[int], eos: int = 1) -> list[int]:
    """Tokens before end-of-sentence."""
    return row[: row.index(eos)]


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# ------------------------------------------------------------------------------------------------ forward / loss
def test_forward_returns_token_plus_weighted_length_loss(tiny_model, source_batch):
    input_ids, attention_mask = source_batch
    labels = torch.tensor([[20, 21, 22, 1, -100], [23, 1, -100, -100, -100], [24, 25, 26, 27, 1]])
    tiny_model.train()
    torch.manual_seed(1)
    output = tiny_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    assert output.logits.shape == (3, 4, TINY["vocab_size"])  # trimmed to the longest target, eos removed
    assert output.length_logits.shape == (3, tiny_model.config.num_length_classes)
    assert torch.allclose(output.loss, output.token_loss + tiny_model.config.length_loss_weight * output.length_loss)
    output.loss.backward()
    no_grad = [name for name, p in tiny_model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_labels_padded_with_pad_or_minus_100_give_the_same_loss(tiny_model, source_batch):
    input_ids, attention_mask = source_batch
    with_pad = torch.tensor([[20, 21, 1, 0], [22, 1, 0, 0], [23, 24, 25, 1]])
    with_ignore = with_pad.masked_fill(with_pad == 0, -100)
    losses = []
    for labels in (with_pad, with_ignore):
        torch.manual_seed(3)
        losses.append(tiny_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss)
    assert torch.equal(losses[0], losses[1])


def test_length_target_is_the_offset_class(tiny_model):
    target_lengths, source_lengths = torch.tensor([3, 10, 0]), torch.tensor([4, 2, 30])
    offset = tiny_model.config.max_length_offset
    expected = torch.tensor([3 - 4 + offset, 2 * offset, 0])  # the last two are clipped to the range
    assert torch.equal(length_classes(tiny_model.config, target_lengths, source_lengths), expected)


def test_trainer_must_not_rescale_the_loss():
    assert NATForConditionalGeneration.accepts_loss_kwargs is False


# -------------------------------------------------------------------------------------- bidirectional attention
@pytest.mark.parametrize("padded", [False, True])
def test_decoder_is_bidirectional(tiny_model, padded):
    """Changing a later decoder input must change an earlier position's output. Without padding the attention
    mask is None, where SDPA silently turns causal unless the module says otherwise."""
    input_ids = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]] if padded else [[5, 6, 7, 1]])
    decoder_input_ids = torch.tensor([[10, 3, 12, 13, 0, 0], [14, 3, 16, 0, 0, 0]] if padded else [[10, 3, 12, 13]])
    changed = decoder_input_ids.clone()
    last = 3 if padded else decoder_input_ids.shape[1] - 1
    changed[0, last] = 20
    with torch.no_grad():
        before = tiny_model(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits
        after = tiny_model(input_ids=input_ids, decoder_input_ids=changed).logits
    assert not torch.allclose(before[0, 0], after[0, 0])  # position 0 sees position `last`
    if padded:
        torch.testing.assert_close(before[1], after[1])  # the other sentence is untouched


def test_decoder_ignores_padding_positions(tiny_model):
    input_ids = torch.tensor([[5, 6, 7, 1]])
    decoder_attention_mask = torch.tensor([[1, 1, 1, 0, 0]])
    a = torch.tensor([[10, 3, 12, 0, 0]])
    b = torch.tensor([[10, 3, 12, 25, 30]])  # different tokens behind the mask
    with torch.no_grad():
        logits_a = tiny_model(input_ids=input_ids, decoder_input_ids=a, decoder_attention_mask=decoder_attention_mask)
        logits_b = tiny_model(input_ids=input_ids, decoder_input_ids=b, decoder_attention_mask=decoder_attention_mask)
    torch.testing.assert_close(logits_a.logits[:, :3], logits_b.logits[:, :3])


def test_encoder_is_bidirectional(tiny_model):
    a, b = torch.tensor([[5, 6, 7, 1]]), torch.tensor([[5, 6, 9, 1]])
    with torch.no_grad():
        state_a = tiny_model.model.encode(a, a != 0)
        state_b = tiny_model.model.encode(b, b != 0)
    assert not torch.allclose(state_a[0, 0], state_b[0, 0])


# --------------------------------------------------------------------------------------------------- generate
def test_generate_alone_equals_generate_in_a_padded_batch(tiny_model, source_batch):
    input_ids, attention_mask = source_batch
    batched = tiny_model.generate(input_ids, attention_mask=attention_mask, num_iterations=4, length_beam=3)
    assert batched.dtype == torch.long
    for row in range(input_ids.shape[0]):
        length = int(attention_mask[row].sum())
        alone = tiny_model.generate(input_ids[row : row + 1, :length], num_iterations=4, length_beam=3)
        assert strip(alone[0].tolist()) == strip(batched[row].tolist())


def test_generate_is_deterministic_and_well_formed(tiny_model, source_batch):
    input_ids, attention_mask = source_batch
    first = tiny_model.generate(input_ids, attention_mask=attention_mask, return_dict_in_generate=True)
    second = tiny_model.generate(input_ids, attention_mask=attention_mask, return_dict_in_generate=True)
    assert torch.equal(first.sequences, second.sequences)
    special = {0, 1, 3}
    for row, length in zip(first.sequences.tolist(), first.lengths.tolist(), strict=True):
        assert row[length] == 1 and all(token == 0 for token in row[length + 1 :])
        assert not special & set(row[:length])  # no pad, eos or mask inside a translation
    assert first.sequences_scores.shape == (3,) and (first.sequences_scores <= 0).all()


def test_generate_runs_the_encoder_once_and_projects_cross_attention_once(tiny_model, source_batch):
    input_ids, attention_mask = source_batch
    encoder_calls = count_calls(tiny_model.model.encoder)
    key_projections = count_calls(tiny_model.model.decoder.layers[0].encoder_attn.k_proj)
    decoder_calls = count_calls(tiny_model.model.decoder)
    tiny_model.generate(input_ids, attention_mask=attention_mask, num_iterations=5, length_beam=3)
    assert encoder_calls[0] == 1
    assert key_projections[0] == 1
    assert decoder_calls[0] == 5  # one decoder pass per iteration, for all length candidates at once


def test_empty_source_gives_an_empty_translation(tiny_model):
    input_ids = torch.tensor([[1, 0, 0], [5, 6, 1]])
    output = tiny_model.generate(input_ids, return_dict_in_generate=True, num_iterations=3, length_beam=2)
    assert output.lengths[0] == 0
    assert output.sequences[0, 0] == 1
    assert output.lengths[1] >= 1
    assert torch.isfinite(output.sequences_scores).all()


def test_max_new_tokens_caps_the_output(tiny_model, source_batch):
    input_ids, attention_mask = source_batch
    output = tiny_model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=3)
    assert output.shape[1] <= 3


def test_one_pass_equals_one_iteration(tiny_model, source_batch):
    input_ids, attention_mask = source_batch
    decoder_calls = count_calls(tiny_model.model.decoder)
    tiny_model.generate(input_ids, attention_mask=attention_mask, num_iterations=1, length_beam=1)
    assert decoder_calls[0] == 1


@pytest.mark.parametrize(("num_iterations", "length_beam"), [(1, 1), (3, 1), (1, 3)])
def test_skipping_unread_scores_changes_no_output(tiny_model, source_batch, num_iterations, length_beam):
    """Without return_dict_in_generate, one-pass decoding with one length candidate skips the last pass's
    normalisation; the tokens must be those of the fully scored run."""
    input_ids, attention_mask = source_batch
    options = {"num_iterations": num_iterations, "length_beam": length_beam}
    scored = tiny_model.generate(input_ids, attention_mask=attention_mask, return_dict_in_generate=True, **options)
    plain = tiny_model.generate(input_ids, attention_mask=attention_mask, **options)
    assert torch.equal(plain, scored.sequences)
    assert (scored.sequences_scores < 0).all()  # log-probabilities were computed for the returned scores


# ------------------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize(
    ("input_ids", "attention_mask", "kwargs", "message"),
    [
        ([[5, 6, 1], [0, 0, 0]], None, {}, "all padding"),
        ([[5, 6, 1]], [[0, 1, 1]], {}, "right-padded"),
        ([[5, 99, 1]], None, {}, "outside the vocabulary"),
        ([[5, -3, 1]], None, {}, "outside the vocabulary"),
        ([[5] * 30 + [1]], None, {}, "max_source_positions"),
        ([[5, 6, 1]], None, {"num_iterations": 0}, "num_iterations"),
        ([[5, 6, 1]], None, {"length_beam": 0}, "length_beam"),
        ([[5, 6, 1]], None, {"length_beam": 1000}, "length_beam"),
        ([[5, 6, 1]], None, {"do_sample": True}, "do_sample"),
        ([[5, 6, 1]], None, {"num_beams": 4}, "num_beams"),
        ([[5, 6, 1]], None, {"temperature": 0.7}, "temperature"),
        ([[5, 6, 1]], None, {"decoding_strategy": "beam"}, "decoding_strategy"),
        ([[5, 6, 1]], None, {"max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_bad_generate_inputs_raise_value_error(tiny_model, input_ids, attention_mask, kwargs, message):
    input_ids = torch.tensor(input_ids)
    attention_mask = None if attention_mask is None else torch.tensor(attention_mask)
    with pytest.raises(ValueError, match=message):
        tiny_model.generate(input_ids, attention_mask=attention_mask, **kwargs)


def test_overlong_input_passes_once_truncated(tiny_model):
    too_long = torch.tensor([[5] * 30 + [1]])
    with pytest.raises(ValueError, match="truncation=True"):
        tiny_model(input_ids=too_long)
    truncated = torch.cat([too_long[:, : TINY["max_source_positions"] - 1], too_long[:, -1:]], dim=1)
    assert tiny_model.generate(truncated).shape[0] == 1


def test_ar_options_passed_by_seq2seq_trainer_are_accepted(tiny_model, source_batch):
    input_ids, attention_mask = source_batch
    output = tiny_model.generate(input_ids, attention_mask=attention_mask, labels=input_ids, num_beams=1,
                                 synced_gpus=False, max_length=10)
    assert output.shape[1] <= 10


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([[20, 1, 21, 1]], "right-padded"),
        ([[20, 0, 21, 1]], "right-padded"),
        ([[20, 77, 1, 0]], "outside the vocabulary"),
        ([[20] * 30 + [1]], "max_target_positions"),
    ],
)
def test_bad_labels_raise_value_error(tiny_model, labels, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(input_ids=torch.tensor([[5, 6, 1]]), labels=torch.tensor(labels))


def test_copy_mode_is_one_pass_only():
    config = NATConfig(**TINY, objective="vanilla", decoder_input_mode="copy")
    model = NATForConditionalGeneration(config).eval()
    input_ids = torch.tensor([[5, 6, 7, 1], [8, 1, 0, 0]])
    loss = model(input_ids=input_ids, labels=torch.tensor([[9, 10, 1], [11, 1, 0]])).loss
    assert torch.isfinite(loss)
    assert model.generate(input_ids, num_iterations=1).shape[0] == 2
    with pytest.raises(ValueError, match="decoder_input_mode"):
        model.generate(input_ids, num_iterations=2)


def test_copy_mode_reads_source_embeddings_at_mask_positions_and_observed_tokens_elsewhere():
    """`<mask>` positions read the copied source; any other id (a token revealed by glancing) is embedded."""
    config = NATConfig(**TINY, objective="vanilla", decoder_input_mode="copy")
    model = NATForConditionalGeneration(config).eval()
    input_ids = torch.tensor([[5, 6, 7, 1]])
    backbone = model.model
    source_mask = torch.ones_like(input_ids, dtype=torch.bool)
    context = backbone.make_context(input_ids, source_mask, backbone.encode(input_ids, source_mask))
    target_mask = torch.ones(1, 3, dtype=torch.bool)
    copied = backbone.decoder_inputs_embeds(torch.tensor([[3, 3, 3]]), target_mask, context)
    # source positions round(j * 3 / 2) = 0, 2, 3 -> ids 5, 7, 1
    expected = backbone.shared(torch.tensor([[5, 7, 1]])) * backbone.embed_scale
    torch.testing.assert_close(copied, expected)
    mixed = backbone.decoder_inputs_embeds(torch.tensor([[3, 9, 3]]), target_mask, context)
    torch.testing.assert_close(mixed[:, [0, 2]], expected[:, [0, 2]])
    torch.testing.assert_close(mixed[:, 1], backbone.shared(torch.tensor([9])) * backbone.embed_scale)
    with torch.no_grad():
        a = model(input_ids=input_ids, decoder_input_ids=torch.tensor([[3, 3, 3]])).logits
        c = model(input_ids=torch.tensor([[5, 8, 7, 1]]), decoder_input_ids=torch.tensor([[3, 3, 3]])).logits
    assert not torch.allclose(a, c)


# ------------------------------------------------------------------------------------------- save / load / Auto
VARIANTS = {
    "default": {},
    "prenorm-sinusoidal-untied": dict(normalize_before=True, position_embedding_type="sinusoidal",
                                      share_encoder_decoder_embeddings=False, tie_word_embeddings=False,
                                      length_prediction_mode="absolute"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_save_load_gives_identical_logits_and_ids(tmp_path, source_batch, variant):
    torch.manual_seed(0)
    model = NATForConditionalGeneration(NATConfig(**TINY, **VARIANTS[variant])).eval()
    model.save_pretrained(tmp_path)
    for name in ("model.safetensors", "config.json", "generation_config.json", "modeling_nat.py",
                 "configuration_nat.py", "methods.py", "method_base.py", "method_cmlm.py", "method_vanilla.py"):
        assert (tmp_path / name).is_file(), name
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is NATForConditionalGeneration
    input_ids, attention_mask = source_batch
    decoder_input_ids = torch.tensor([[3, 3, 20, 3], [21, 3, 0, 0], [3, 22, 23, 0]])
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
        actual = loaded(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    assert torch.equal(expected.logits, actual.logits)
    assert torch.equal(expected.length_logits, actual.length_logits)
    assert torch.equal(model.generate(input_ids, attention_mask=attention_mask),
                       loaded.generate(input_ids, attention_mask=attention_mask))


def test_output_projection_is_tied_to_the_embeddings(tmp_path, tiny_model):
    assert tiny_model.lm_head.weight is tiny_model.model.shared.weight
    tiny_model.save_pretrained(tmp_path)
    loaded = NATForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.shared.weight
    untied = NATForConditionalGeneration(NATConfig(**TINY, tie_word_embeddings=False))
    assert untied.lm_head.weight is not untied.model.shared.weight


def test_generation_settings_survive_save_load(tmp_path, tiny_model, source_batch):
    tiny_model.generation_config.num_iterations = 3
    tiny_model.generation_config.length_beam = 2
    tiny_model.save_pretrained(tmp_path)
    assert GenerationConfig.from_pretrained(tmp_path).num_iterations == 3
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert (loaded.generation_config.num_iterations, loaded.generation_config.length_beam) == (3, 2)
    refinements = count_calls(loaded.model.decoder)
    input_ids, attention_mask = source_batch
    from_defaults = loaded.generate(input_ids, attention_mask=attention_mask)
    assert refinements[0] == 3
    explicit = loaded.generate(input_ids, attention_mask=attention_mask, num_iterations=3, length_beam=2)
    assert torch.equal(from_defaults, explicit)
    loaded.generate(input_ids, attention_mask=attention_mask, num_iterations=1)  # call-site kwargs override
    assert refinements[0] == 3 + 3 + 1


def test_auto_classes_build_nat_models(tiny_config):
    assert type(AutoModelForSeq2SeqLM.from_config(tiny_config)) is NATForConditionalGeneration
    base = AutoModel.from_config(tiny_config)
    assert type(base) is NATModel
    output = base(input_ids=torch.tensor([[5, 6, 1]]), decoder_input_ids=torch.tensor([[3, 3]]))
    assert output.last_hidden_state.shape == (1, 2, TINY["d_model"])


# ------------------------------------------------------------------------------ outputs, attention, inputs
def decoder_batch() -> dict[str, torch.Tensor]:
    input_ids = torch.tensor([[5, 6, 7, 8, 1], [9, 10, 1, 0, 0]])
    decoder_input_ids = torch.tensor([[3, 3, 12, 3], [14, 3, 0, 0]])
    return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long(),
            "decoder_input_ids": decoder_input_ids, "decoder_attention_mask": (decoder_input_ids != 0).long()}


@pytest.mark.parametrize("model_class", [NATModel, NATForConditionalGeneration])
@pytest.mark.parametrize("normalize_before", [False, True])
def test_hidden_states_by_argument_or_config(model_class, normalize_before):
    torch.manual_seed(0)
    config = NATConfig(**TINY, normalize_before=normalize_before)
    model = model_class(config).eval()
    batch = decoder_batch()
    with torch.no_grad():
        plain = model(**batch)
        by_argument = model(**batch, output_hidden_states=True)
        config.output_hidden_states = True
        by_config = model(**batch)
    assert plain.encoder_hidden_states is None and plain.decoder_hidden_states is None
    for output in (by_argument, by_config):
        assert len(output.encoder_hidden_states) == TINY["encoder_layers"] + 1
        assert len(output.decoder_hidden_states) == TINY["decoder_layers"] + 1
        torch.testing.assert_close(output.encoder_hidden_states[-1], output.encoder_last_hidden_state)
        decoder_last = output.last_hidden_state if model_class is NATModel else model.model(**batch).last_hidden_state
        torch.testing.assert_close(output.decoder_hidden_states[-1], decoder_last)
        # the first entry is the embedding output: position embeddings added to the scaled token embeddings
        scaled = model.get_input_embeddings()(batch["input_ids"]) * (TINY["d_model"] ** 0.5)
        positions = model.get_encoder().embed_positions(batch["input_ids"].shape[1])
        torch.testing.assert_close(output.encoder_hidden_states[0], scaled + positions)


@pytest.mark.parametrize("model_class", [NATModel, NATForConditionalGeneration])
def test_return_dict_false_by_argument_or_config_gives_the_same_values_as_a_tuple(model_class):
    torch.manual_seed(0)
    config = NATConfig(**TINY)
    model = model_class(config).eval()
    batch = decoder_batch()
    with torch.no_grad():
        as_dict = model(**batch)
        as_tuple = model(**batch, return_dict=False)
        config.return_dict = False
        from_config = model(**batch)
    expected = as_dict.to_tuple()
    for output in (as_tuple, from_config):
        assert type(output) is tuple and len(output) == len(expected) == 3
        for actual, wanted in zip(output, expected, strict=True):
            assert torch.equal(actual, wanted)


def test_eager_attention_runs_without_sdpa_and_matches_it(monkeypatch, source_batch):
    """attn_implementation="eager" used to fall back to SDPA silently."""
    torch.manual_seed(0)
    sdpa_model = NATForConditionalGeneration(NATConfig(**TINY)).eval()
    eager_model = NATForConditionalGeneration._from_config(NATConfig(**TINY), attn_implementation="eager").eval()
    eager_model.load_state_dict(sdpa_model.state_dict())
    assert eager_model.config._attn_implementation == "eager"
    batch = decoder_batch()
    with torch.no_grad():
        expected = sdpa_model(**batch)

        def no_sdpa(*args, **kwargs):
            raise AssertionError("SDPA was called by the eager model")

        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", no_sdpa)
        actual = eager_model(**batch, output_attentions=True)
    torch.testing.assert_close(actual.logits, expected.logits)
    torch.testing.assert_close(actual.encoder_last_hidden_state, expected.encoder_last_hidden_state)
    assert len(actual.cross_attentions) == TINY["decoder_layers"]
    cross = actual.cross_attentions[0]  # [batch, heads, target, source]
    assert cross.shape == (2, TINY["decoder_attention_heads"], 4, 5)
    torch.testing.assert_close(cross.sum(-1), torch.ones(cross.shape[:-1]))
    assert (cross[1, :, :, 3:] == 0).all()  # padded source positions get no weight


def test_output_attentions_with_sdpa_computes_the_weights_eagerly():
    torch.manual_seed(0)
    model = NATForConditionalGeneration(NATConfig(**TINY)).eval()
    assert model.config._attn_implementation == "sdpa"
    batch = decoder_batch()
    with torch.no_grad():
        plain = model(**batch)
        with_weights = model(**batch, output_attentions=True)
    torch.testing.assert_close(with_weights.logits, plain.logits)
    assert plain.encoder_attentions is None
    assert len(with_weights.encoder_attentions) == TINY["encoder_layers"]
    assert len(with_weights.decoder_attentions) == TINY["decoder_layers"]
    assert with_weights.decoder_attentions[0].shape == (2, TINY["decoder_attention_heads"], 4, 4)


@pytest.mark.parametrize("implementation", ["flex_attention", "flash_attention_2"])
def test_unsupported_attention_implementations_are_refused(implementation):
    """Flex attention used to be advertised and failed on every forward (a mask built for one query)."""
    with pytest.raises(ValueError, match="does not support"):
        NATForConditionalGeneration._from_config(NATConfig(**TINY), attn_implementation=implementation)
    assert NATForConditionalGeneration._supports_flex_attn is False
    assert NATForConditionalGeneration._supports_flash_attn is False


@pytest.mark.parametrize("model_class", [NATModel, NATForConditionalGeneration])
def test_inputs_embeds_equal_input_ids(model_class):
    torch.manual_seed(0)
    model = model_class(NATConfig(**TINY)).eval()
    batch = decoder_batch()
    embed = model.get_input_embeddings()
    with torch.no_grad():
        expected = model(**batch).to_tuple()
        embedded = dict(batch, inputs_embeds=embed(batch["input_ids"]),
                        decoder_inputs_embeds=embed(batch["decoder_input_ids"]))
        del embedded["input_ids"], embedded["decoder_input_ids"]
        actual = model(**embedded).to_tuple()
    for got, wanted in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, wanted)
    with pytest.raises(ValueError, match="not both"):
        model(input_ids=batch["input_ids"], inputs_embeds=embed(batch["input_ids"]))


# ------------------------------------------------------------------------------------- validation rules
@pytest.mark.parametrize("model_class", [NATModel, NATForConditionalGeneration])
def test_left_padding_is_rejected_by_every_forward(model_class):
    """NATModel used to accept left padding silently and give a different result."""
    model = model_class(NATConfig(**TINY)).eval()
    input_ids = torch.tensor([[0, 0, 5, 6, 1], [7, 8, 9, 10, 1]])
    with pytest.raises(ValueError, match="right-padded"):
        model(input_ids=input_ids, attention_mask=(input_ids != 0).long(), decoder_input_ids=torch.tensor([[3, 3]] * 2))


def test_labels_with_decoder_input_ids_is_an_error(tiny_model):
    """The decoder inputs used to be dropped silently when labels were given."""
    batch = decoder_batch()
    with pytest.raises(ValueError, match="not both"):
        tiny_model(**batch, labels=torch.tensor([[20, 21, 1], [22, 1, 0]]))


@pytest.mark.parametrize("model_class", [NATModel, NATForConditionalGeneration])
def test_garbage_in_padded_positions_is_never_looked_up(model_class):
    """Out-of-vocabulary ids at padded positions (attention mask 0) used to raise IndexError in the embedding."""
    torch.manual_seed(0)
    model = model_class(NATConfig(**TINY)).eval()
    batch = decoder_batch()
    garbage = dict(batch)
    garbage["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 999)
    garbage["input_ids"][1, -1] = -7
    garbage["decoder_input_ids"] = batch["decoder_input_ids"].masked_fill(batch["decoder_attention_mask"] == 0, 555)
    with torch.no_grad():
        expected = model(**batch).to_tuple()
        actual = model(**garbage).to_tuple()
    for got, wanted in zip(actual, expected, strict=True):
        assert torch.equal(got, wanted)
    with pytest.raises(ValueError, match="outside the vocabulary"):  # at a real position it is still an error
        model(**dict(garbage, decoder_attention_mask=torch.ones_like(batch["decoder_attention_mask"])))


def test_garbage_in_padded_positions_gives_the_same_translation(tiny_model, source_batch):
    input_ids, attention_mask = source_batch
    garbage = input_ids.masked_fill(attention_mask == 0, 12345)
    assert torch.equal(tiny_model.generate(garbage, attention_mask=attention_mask),
                       tiny_model.generate(input_ids, attention_mask=attention_mask))


def test_copy_mode_ignores_garbage_in_padded_source_positions():
    torch.manual_seed(0)
    model = NATForConditionalGeneration(NATConfig(**TINY, objective="vanilla", decoder_input_mode="copy")).eval()
    batch = decoder_batch()
    garbage = dict(batch, input_ids=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 999))
    with torch.no_grad():
        assert torch.equal(model(**garbage).logits, model(**batch).logits)


# ------------------------------------------------------------------------------------------- torch.export
@pytest.mark.parametrize("model_class", [NATModel, NATForConditionalGeneration])
def test_torch_export_with_dynamic_batch_and_lengths_equals_eager(model_class):
    """_check_source used to branch on tensor values (padding layout, lengths), which export cannot trace."""
    from torch.export import Dim

    torch.manual_seed(0)
    model = model_class(NATConfig(**TINY)).eval()
    batch = decoder_batch()
    rows = Dim("batch", min=1, max=64)
    source = Dim("source", min=2, max=TINY["max_source_positions"])
    target = Dim("target", min=2, max=TINY["max_target_positions"])
    dynamic = {"input_ids": {0: rows, 1: source}, "attention_mask": {0: rows, 1: source},
               "decoder_input_ids": {0: rows, 1: target}, "decoder_attention_mask": {0: rows, 1: target}}
    exported = torch.export.export(model, (), batch, dynamic_shapes=dynamic)
    # other batch size and lengths than the traced ones
    input_ids = torch.tensor([[5, 6, 7, 1], [9, 10, 1, 0], [11, 1, 0, 0]])
    decoder_input_ids = torch.tensor([[3, 3, 3, 3, 3, 3], [3, 15, 3, 0, 0, 0], [3, 0, 0, 0, 0, 0]])
    other = {"input_ids": input_ids, "attention_mask": (input_ids != 0).long(),
             "decoder_input_ids": decoder_input_ids, "decoder_attention_mask": (decoder_input_ids != 0).long()}
    with torch.no_grad():
        for inputs in (batch, other):
            expected = model(**inputs).to_tuple()
            actual = exported.module()(**inputs).to_tuple()
            for got, wanted in zip(actual, expected, strict=True):
                torch.testing.assert_close(got, wanted)
    with pytest.raises(ValueError, match="right-padded"):  # eager still checks every value
        model(**dict(other, attention_mask=other["attention_mask"].flip(-1)))


def test_copy_mode_needs_source_ids():
    """A "copy" decoder reads source token embeddings by id: embeddings in place of ids are refused by name."""
    model = NATForConditionalGeneration(NATConfig(**TINY, objective="vanilla", decoder_input_mode="copy")).eval()
    batch = decoder_batch()
    embed = model.get_input_embeddings()
    with pytest.raises(ValueError, match="decoder_inputs_embeds needs decoder_input_mode='mask'"):
        model(input_ids=batch["input_ids"], decoder_inputs_embeds=embed(batch["decoder_input_ids"]))
    with pytest.raises(ValueError, match="pass input_ids, not inputs_embeds"):
        model(inputs_embeds=embed(batch["input_ids"]), attention_mask=batch["attention_mask"],
              decoder_input_ids=batch["decoder_input_ids"])
