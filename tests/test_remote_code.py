"""A saved model must load through `trust_remote_code` in a process where `nat_hf` cannot be imported: from a
directory, and by repo id from an offline Hub-style cache; for every objective of `nat_hf.methods.METHODS`."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from nat_hf import NATConfig, NATForConditionalGeneration
from nat_hf.methods import METHODS

from .conftest import TINY, objective_config_kwargs

LOAD_AND_GENERATE = """
import json, sys
sys.modules["nat_hf"] = None  # make `import nat_hf` fail: only the remote code may define the model
try:
    import nat_hf  # noqa: F401
    raise SystemExit("nat_hf is importable")
except ImportError:
    pass
import torch
from transformers import AutoModelForSeq2SeqLM
model = AutoModelForSeq2SeqLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
input_ids = torch.tensor(json.loads(sys.argv[2]))
output = model.generate(input_ids, attention_mask=(input_ids != 0).long())
print(json.dumps({"module": type(model).__module__, "ids": output.tolist(), "objective": model.config.objective,
                  "options": {name: getattr(model.generation_config, name, None) for name in json.loads(sys.argv[3])}}))
"""

SOURCES = [[5, 6, 7, 8, 1], [9, 10, 1, 0, 0]]


def non_default_options(model) -> dict:
    """Each decoding option of the model's method moved off its default where the method accepts it (ints + 1,
    floats x 2 + 0.5), so that a round trip that dropped the generation config would show."""
    method, changed = model.nat_method, {}
    for name, default in method.option_defaults().items():
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            continue
        candidate = {**method.option_defaults(), **changed, name: default + 1 if isinstance(default, int)
                     else default * 2 + 0.5}
        try:
            method.check_options(model.config, candidate)
        except ValueError:
            continue
        changed[name] = candidate[name]
    return changed


def load_in_fresh_process(name_or_path: str, hf_home, option_names: list[str]) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_GENERATE, name_or_path, json.dumps(SOURCES), json.dumps(option_names)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def save_objective_model(directory, objective: str) -> tuple[list, dict]:
    """A tiny random model of `objective` with non-default decoding options, saved; its generate output and
    options."""
    torch.manual_seed(0)
    model = NATForConditionalGeneration(NATConfig(**objective_config_kwargs(objective))).eval()
    for name, value in non_default_options(model).items():
        setattr(model.generation_config, name, value)
    model.save_pretrained(directory)
    options = {name: getattr(model.generation_config, name) for name in model.nat_method.option_defaults()}
    return model.generate(torch.tensor(SOURCES)).tolist(), options


@pytest.mark.parametrize("objective", sorted(METHODS))
def test_remote_code_load_from_a_directory(tmp_path, objective):
    directory = tmp_path / "model"
    expected, options = save_objective_model(directory, objective)
    result = load_in_fresh_process(str(directory), tmp_path / "hf", list(options))
    assert result["module"].startswith("transformers_modules.")
    assert result["objective"] == objective
    assert result["ids"] == expected
    assert result["options"] == options


def test_non_default_options_move_the_generation_config():
    model = NATForConditionalGeneration(NATConfig(**TINY))
    assert non_default_options(model) == {"num_iterations": 11, "length_beam": 6}


def test_remote_code_load_by_repo_id_from_an_offline_hub_cache(tmp_path):
    directory = tmp_path / "model"
    expected, options = save_objective_model(directory, "cmlm")
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--nat-hf--tiny-test"
    shutil.copytree(directory, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    result = load_in_fresh_process("nat-hf/tiny-test", tmp_path / "hf", list(options))
    assert result["module"].startswith("transformers_modules.")
    assert result["ids"] == expected
    assert result["options"] == options == {"num_iterations": 11, "length_beam": 6,
                                            "decoding_strategy": "mask_predict"}
