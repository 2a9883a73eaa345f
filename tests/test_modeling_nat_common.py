"""transformers' own model contract (`ModelTesterMixin`, `ConfigTester`) run on the NAT models.

The mixins come from the sdist of the installed transformers version (see `tests/transformers_test_sources.py`).
Adapted in `NATModelTest`:
- `test_attention_outputs` is skipped: it counts the fields of a seq2seq output (5) and NAT outputs have one more,
  `length_logits`. `test_nat_attention_outputs` checks the same encoder/decoder/cross attentions.
- `test_training*` run on `NATForConditionalGeneration` only: `NATModel` has no head, hence no loss (transformers
  skips base models there only when they are in its own MODEL_MAPPING_NAMES).
- `all_generative_model_classes = ()`: NAT `generate` is parallel Mask-Predict, not `GenerationMixin` decoding;
  `test_model_base_model_prefix` is re-run on `NATForConditionalGeneration`.
- The tester uses `objective="vanilla"`: with labels CMLM masks a random part of the target, so two forward calls
  differ, and `test_model_outputs_equivalence` compares two calls with labels.

Not run, because they cannot apply to a NAT model (the mixin skips them itself, or they live in modules the sdist
does not ship):
- GenerationTesterMixin (autoregressive greedy/beam/sampling/cache tests): NAT decoding is parallel; see
  tests/test_modeling_nat.py for generate.
- ExportTesterMixin: not in the sdist; tests/test_modeling_nat.py exports both models with torch.export.
- Flash attention 2/3/4 and flex attention tests: not supported (`_supports_flash_attn = _supports_flex_attn =
  False`; see `NATPreTrainedModel` for why), and flash is not installed on CPU.
- KV-cache tests (`test_bc_cache_name_forward`, ...): a NAT decoder has no cache.
- `capture_outputs` tests (`test_can_capture_specific_layers_hidden_states`, ...): the NAT layers collect hidden
  states and attentions explicitly (a plain, export-friendly loop), not through hooks.
- RoPE, mixture-of-experts (`grouped_mm`, router logits), tensor-parallel plan, `_keep_in_fp32_modules`, legacy
  checkpoint conversion, composite/sub-config and position-embedding resizing tests: NAT has none of these.
- `test_encoder_decoder_loss_no_double_shift`, causal-LM label shifting: NAT labels are not shifted; the mixin runs
  them only for models in its own seq2seq/causal LM mappings.
- Tests needing an accelerator, several devices, MPS, deepspeed or the kernels library, and `@slow` ones.
"""

import unittest

import pytest
import torch

from nat_hf import NATConfig, NATForConditionalGeneration, NATModel

from . import transformers_test_sources

test_modeling_common, test_configuration_common = transformers_test_sources.load()
ModelTesterMixin = test_modeling_common.ModelTesterMixin
ConfigTester = test_configuration_common.ConfigTester


class NATModelTester:
    """Tiny config and random inputs, in the layout of transformers' in-tree `*ModelTester` classes."""

    def __init__(
        self,
        parent,
        batch_size=7,  # test_eager_matches_sdpa_inference pads batches to 7 rows with random ids (pad included)
        seq_length=7,
        decoder_seq_length=7,  # ... and reuses the source-shaped attention mask as decoder_attention_mask
        is_training=True,
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        max_position_embeddings=20,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.encoder_seq_length = seq_length
        self.decoder_seq_length = decoder_seq_length
        self.is_training = is_training
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings

    def get_config(self) -> NATConfig:
        return NATConfig(
            vocab_size=self.vocab_size,
            d_model=self.hidden_size,
            encoder_layers=self.num_hidden_layers,
            decoder_layers=self.num_hidden_layers,
            encoder_attention_heads=self.num_attention_heads,
            decoder_attention_heads=self.num_attention_heads,
            encoder_ffn_dim=self.intermediate_size,
            decoder_ffn_dim=self.intermediate_size,
            max_source_positions=self.max_position_embeddings,
            max_target_positions=self.max_position_embeddings,
            max_length_offset=6,
            dropout=0.0,
            # With labels CMLM masks a random part of each target, so two forward calls differ; the common tests
            # compare two calls with labels (test_model_outputs_equivalence). The vanilla objective is
            # deterministic and runs the same encoder, decoder and losses.
            objective="vanilla",
        )

    def prepare_config_and_inputs(self) -> tuple[NATConfig, dict]:
        # ids 4.. avoid the special tokens (0 pad, 1 eos, 2 unk, 3 mask); sources end with eos and are
        # right-padded: row i has i fewer tokens than the longest
        input_ids = torch.randint(4, self.vocab_size, (self.batch_size, self.seq_length))
        lengths = torch.tensor([self.seq_length - i % 3 for i in range(self.batch_size)])
        attention_mask = torch.arange(self.seq_length)[None, :] < lengths[:, None]
        input_ids[torch.arange(self.batch_size), lengths - 1] = 1
        input_ids = input_ids.masked_fill(~attention_mask, 0)
        decoder_input_ids = torch.randint(3, self.vocab_size, (self.batch_size, self.decoder_seq_length))
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask.long(),
            "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": torch.ones_like(decoder_input_ids),
        }
        return self.get_config(), inputs

    def prepare_config_and_inputs_for_common(self) -> tuple[NATConfig, dict]:
        return self.prepare_config_and_inputs()


class NATModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (NATModel, NATForConditionalGeneration)
    # NAT generate is parallel Mask-Predict with its own options: GenerationTesterMixin's autoregressive tests
    # (greedy/beam/sampling/caches) do not apply; tests/test_modeling_nat.py tests generate.
    all_generative_model_classes = ()
    is_encoder_decoder = True
    test_resize_embeddings = True
    test_missing_keys = True
    # the mixin runs this only for models dated 2023 or later by a copyright line, which our files do not have
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = NATModelTester(self)
        self.config_tester = ConfigTester(self, config_class=NATConfig, d_model=16)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        """With labels (training tests), the objective builds the decoder inputs: drop the given ones."""
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is NATForConditionalGeneration:
            inputs_dict["labels"] = inputs_dict.pop("decoder_input_ids")
            inputs_dict.pop("decoder_attention_mask", None)
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model_base_model_prefix(self):  # the mixin runs it on all_generative_model_classes, emptied above
        self.all_generative_model_classes = (NATForConditionalGeneration,)
        super().test_model_base_model_prefix()

    # NATModel has no head, hence no loss. transformers skips base models in these tests when they are listed in
    # its MODEL_MAPPING_NAMES, where a model defined outside transformers never is.
    def test_training(self):
        self.all_model_classes = (NATForConditionalGeneration,)
        super().test_training()

    def test_training_gradient_checkpointing(self):
        self.all_model_classes = (NATForConditionalGeneration,)
        super().test_training_gradient_checkpointing()

    def test_training_gradient_checkpointing_use_reentrant_false(self):
        self.all_model_classes = (NATForConditionalGeneration,)
        super().test_training_gradient_checkpointing_use_reentrant_false()

    def test_training_gradient_checkpointing_use_reentrant_true(self):
        self.all_model_classes = (NATForConditionalGeneration,)
        super().test_training_gradient_checkpointing_use_reentrant_true()

    @unittest.skip("counts the fields of a seq2seq output (5); NAT outputs have one more, length_logits. "
                   "test_nat_attention_outputs checks the same attentions")
    def test_attention_outputs(self):
        pass

    def test_nat_attention_outputs(self):
        """Encoder, decoder and cross-attention weights: one per layer, [batch, heads, queries, keys], rows
        summing to 1, zero on padded keys; requested by argument or by config, with eager or SDPA."""
        tester = self.model_tester
        for model_class in self.all_model_classes:
            for implementation, by_config in (("eager", False), ("eager", True), ("sdpa", False)):
                config, inputs = tester.prepare_config_and_inputs_for_common()
                config._attn_implementation = implementation
                if by_config:
                    config.output_attentions = True
                model = model_class(config).eval()
                with torch.no_grad():
                    outputs = model(**inputs, **({} if by_config else {"output_attentions": True}))
                source_mask = inputs["attention_mask"].bool()
                expected = {
                    "encoder_attentions": (tester.seq_length, tester.seq_length),
                    "decoder_attentions": (tester.decoder_seq_length, tester.decoder_seq_length),
                    "cross_attentions": (tester.decoder_seq_length, tester.seq_length),
                }
                for name, (queries, keys) in expected.items():
                    weights = getattr(outputs, name)
                    self.assertEqual(len(weights), tester.num_hidden_layers, name)
                    for layer in weights:
                        self.assertEqual(layer.shape, (tester.batch_size, tester.num_attention_heads, queries, keys))
                        torch.testing.assert_close(layer.sum(-1), torch.ones(layer.shape[:-1]))
                        if name != "decoder_attentions":
                            self.assertTrue((layer.masked_select(~source_mask[:, None, None, :]) == 0).all())
                self.assertIsNone(model(**inputs).encoder_attentions if not by_config else None)


def test_common_suite_is_loaded_from_the_installed_transformers():
    import transformers

    assert transformers_test_sources.cache_root().name == f"transformers-tests-{transformers.__version__}"
    assert ModelTesterMixin.__module__ == "transformers_tests.test_modeling_common"
    assert len([name for name in dir(NATModelTest) if name.startswith("test_")]) > 50


@pytest.mark.parametrize("missing", ["no-network"])
def test_unfetchable_sdist_is_an_error_not_a_skip(tmp_path, monkeypatch, missing):
    monkeypatch.setenv("NAT_TRANSFORMERS_TESTS_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(transformers_test_sources.TransformersTestsUnavailable, match="could not download"):
        transformers_test_sources.fetch(transformers_test_sources.cache_root())
