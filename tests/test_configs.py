"""Every shipped training config builds the model its YAML describes (architecture and parameter count), with the
real tokenizer where it names one, reads splits that exist, and decodes with its evaluation settings. No training.

The configs point at the shared Multi30k data and AR teacher through $NAT_HF_DATA_DIR and $NAT_HF_TEACHER; the
tests set them to ../shared (next to the repository, as on the development machine and in CI) and skip if it is
absent."""

import re
from pathlib import Path

import pytest
import torch
import yaml

from nat_hf.methods import METHODS
from nat_hf.train import apply_environment, build_model, decoding_options, load_config, load_splits

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "training" / "configs").glob("*.yaml"))
SHARED = REPO.parent / "shared"
DATA_DIR = SHARED / "data" / "multi30k"
TEACHER = SHARED / "models" / "ar-teacher-multi30k-en-de"


class StandInTokenizer:
    """A vocabulary of `size` entries with the special ids `train_tokenizer` gives (pad 0, eos 1, unk 2, mask 3,
    blank 4), for configs whose tokenizer is trained at the start of the run."""

    pad_token_id, eos_token_id, unk_token_id, mask_token_id = 0, 1, 2, 3

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def get_vocab(self) -> dict[str, int]:
        return {"<pad>": 0, "</s>": 1, "<unk>": 2, "<mask>": 3, "<blank>": 4}

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.get_vocab()[token]


def expected_parameters(model_args: dict, vocab_size: int, family: str, heads: int) -> int:
    """Parameter count of the architecture the YAML describes, counted by hand (tied and shared embeddings once)."""
    d, ffn = model_args["d_model"], model_args["ffn_dim"]
    attention, feed_forward, layer_norm = 4 * (d * d + d), d * ffn + ffn + ffn * d + d, 2 * d
    layers = (model_args["encoder_layers"] * (attention + 2 * layer_norm + feed_forward)
              + model_args["decoder_layers"] * (2 * attention + 3 * layer_norm + feed_forward))
    source, target = model_args["max_source_positions"], model_args["max_target_positions"]
    if family == "ar":  # Marian: sinusoidal position tables stored as (frozen) parameters, no length predictor
        return vocab_size * d + layers + 2 * max(source, target + 1) * d
    positions = 0 if model_args.get("position_embedding_type") == "sinusoidal" else (source + target) * d
    final_norms = 2 * layer_norm if model_args.get("normalize_before") else 0
    return vocab_size * d + layers + positions + final_norms + heads


def expected_head_parameters(config) -> int:
    """The method's heads: a length predictor counted by hand (the methods with one); other heads (e.g. `dag`'s
    link scorer, counted by hand in its own test file) by building them from the method's `heads`."""
    heads = METHODS[config.objective].heads(config)
    if set(heads) == {"length_predictor"}:
        return config.d_model * config.num_length_classes + config.num_length_classes
    return sum(parameter.numel() for head in heads.values() for parameter in head.parameters())


def test_every_config_is_covered():
    assert {path.name for path in CONFIGS} >= {"multi30k_quickstart.yaml", "multi30k_cmlm.yaml",
                                               "multi30k_ar.yaml", "tiny_test.yaml"}


def made_by_earlier_steps(config_text: str, tmp_path: Path) -> list[str]:
    """Overrides for the artefacts under runs/ that a config reads and an earlier step of benchmarks/multi30k.sh
    makes: the greedy distillation (`nat-hf distill --num-beams 1`; the beam-4 one has the same layout) and the
    shallow copy of the teacher (training/shallow_ar.py, made here for real)."""
    overrides = []
    if "runs/distill_greedy" in config_text:
        overrides.append(f"data.data_dir={DATA_DIR / 'distill'}")
    if "runs/ar_shallow_init" in config_text:
        import importlib.util

        spec = importlib.util.spec_from_file_location("shallow_ar", REPO / "training" / "shallow_ar.py")
        shallow_ar = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(shallow_ar)
        shallow_ar.make_shallow(str(TEACHER), tmp_path / "ar_shallow_init", decoder_layers=1)
        overrides.append(f"model.init_from={tmp_path / 'ar_shallow_init'}")
    trained = re.search(r"init_from: runs/(\w+)/best", config_text)
    if trained:  # a model trained by another shipped config: that config's model, untrained, stands in for it
        from transformers import AutoTokenizer

        earlier = REPO / "training" / "configs" / f"{trained.group(1)}.yaml"
        config = load_config(earlier, made_by_earlier_steps(earlier.read_text(), tmp_path))
        apply_environment(config)
        tokenizer = AutoTokenizer.from_pretrained(config.data.tokenizer or config.model.init_from_ar)
        model, _ = build_model(config, tokenizer)
        model.save_pretrained(tmp_path / trained.group(1))
        overrides.append(f"model.init_from={tmp_path / trained.group(1)}")
    return overrides


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_shipped_config_builds_the_model_it_describes(path, monkeypatch, tmp_path):
    if not (DATA_DIR / "train.en").is_file() or not (TEACHER / "config.json").is_file():
        pytest.skip(f"the shared data and teacher are not at {SHARED}")
    from transformers import AutoConfig, AutoTokenizer

    monkeypatch.setenv("NAT_HF_DATA_DIR", str(DATA_DIR))
    monkeypatch.setenv("NAT_HF_TEACHER", str(TEACHER))
    config = load_config(path, made_by_earlier_steps(path.read_text(), tmp_path))
    apply_environment(config)
    yaml_model = yaml.safe_load(path.read_text())["model"]
    family = yaml_model.get("family", "nat")
    if "init_from" in yaml_model:  # the saved model's architecture is kept: the YAML describes none
        saved = AutoConfig.from_pretrained(config.model.init_from).to_dict()
        if saved["model_type"] == "nat":
            kept = ("max_source_positions", "max_target_positions", "position_embedding_type", "normalize_before")
            positions = {key: saved[key] for key in kept}
        else:  # Marian
            positions = {"max_source_positions": saved["max_position_embeddings"],
                         "max_target_positions": saved["max_position_embeddings"] - 1}
        yaml_model = {**{key: saved[key] for key in ("d_model", "encoder_layers", "decoder_layers")},
                      "ffn_dim": saved["encoder_ffn_dim"], **positions, **yaml_model}

    # every split the run reads exists and is readable (a misspelt test split would only fail after training)
    splits = load_splits(config)
    assert set(splits) == {config.data.train_split, config.data.valid_split, *config.data.test_splits}

    tokenizer_dir = config.data.tokenizer or config.model.init_from_ar
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else StandInTokenizer(
        config.data.vocab_size)
    torch.manual_seed(0)
    model, _ = build_model(config, tokenizer)
    vocab_size = len(tokenizer) + (yaml_model.get("blank_token") == "append")  # a blank appended after it

    names = {"d_model": ["d_model"], "encoder_layers": ["encoder_layers"], "decoder_layers": ["decoder_layers"],
             "attention_heads": ["encoder_attention_heads", "decoder_attention_heads"],
             "ffn_dim": ["encoder_ffn_dim", "decoder_ffn_dim"], "activation_function": ["activation_function"]}
    if family == "nat":
        names.update({key: [key] for key in ("max_source_positions", "max_target_positions", "objective",
                                             "length_prediction_mode", "max_length_offset", "normalize_before",
                                             "position_embedding_type", "decoder_input_mode")})
    for key, attributes in names.items():
        if key in yaml_model:
            for attribute in attributes:
                assert getattr(model.config, attribute) == yaml_model[key], (path.name, key)
    assert model.config.vocab_size == vocab_size
    assert len(model.model.encoder.layers) == yaml_model["encoder_layers"]
    assert len(model.model.decoder.layers) == yaml_model["decoder_layers"]
    for stack in (model.model.encoder, model.model.decoder):
        widths = {module.out_features for module in stack.layers[0].modules() if isinstance(module, torch.nn.Linear)}
        assert widths == {yaml_model["d_model"], yaml_model["ffn_dim"]}, path.name
    heads = expected_head_parameters(model.config) if family == "nat" else 0
    assert model.num_parameters() == expected_parameters(yaml_model, vocab_size, family, heads)

    if config.adversarial.enabled:  # the discriminator the adversarial section describes, sized for this model
        from nat_hf.adversarial import build_discriminator

        discriminator = build_discriminator(config.adversarial, model)
        for key, value in config.adversarial.discriminator.items():
            assert getattr(discriminator.config, key) == value, (path.name, key)
        assert discriminator.config.vocab_size == model.config.vocab_size
        assert len(discriminator.layers.layers) == discriminator.config.layers

    # the evaluation settings decode with this model (periodic and final)
    source = ({"input_ids": torch.tensor([[10, 11, 12, 13, 1]])} if isinstance(tokenizer, StandInTokenizer)
              else tokenizer(["A man is playing the guitar."], return_tensors="pt"))
    model.eval()
    for final in (False, True):
        options = decoding_options(config, final)
        if family == "ar":
            options["max_new_tokens"] = 4  # an untrained AR model would run to the length limit
        with torch.no_grad():
            output = model.generate(**source, **options)
        assert output.shape[0] == 1, (path.name, final)
    final = decoding_options(config, True, objective=getattr(model.config, "objective", None),
                             model_config=model.config)
    assert {name: getattr(model.generation_config, name) for name in final} == final
