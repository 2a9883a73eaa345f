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
input_ids = torch.tensor(json.loads(sys.argv[1]))
for name_or_path, option_names in json.loads(sys.argv[2]):  # one process for every model: one interpreter start
    model = AutoModelForSeq2SeqLM.from_pretrained(name_or_path, trust_remote_code=True).eval()
    output = model.generate(input_ids, attention_mask=(input_ids != 0).long())
    print(json.dumps({"module": type(model).__module__, "ids": output.tolist(), "objective": model.config.objective,
                      "options": {name: getattr(model.generation_config, name, None) for name in option_names}}))
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


def load_in_fresh_process(models: list[tuple[str, list[str]]], hf_home) -> list[dict]:
    """Load each (directory or repo id, decoding option names) in ONE python process where `nat_hf` cannot be
    imported, offline, with `hf_home` as the Hub cache; each model's class module, output on SOURCES and options."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", LOAD_AND_GENERATE, json.dumps(SOURCES), json.dumps(models)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.strip().splitlines()[-len(models):]]


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


HUB_REPO = "nat-hf/tiny-test"


@pytest.fixture(scope="module")
def remote_loads(tmp_path_factory) -> dict:
    """Every objective's tiny model saved in a directory of its own, and the cmlm one also in an offline Hub-style
    cache under a repo id; all loaded in one fresh process. name -> (expected ids, options, loaded result)."""
    root = tmp_path_factory.mktemp("remote_code")
    saved = {objective: save_objective_model(root / objective, objective) for objective in sorted(METHODS)}
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = root / "hf" / "hub" / "models--nat-hf--tiny-test"
    shutil.copytree(root / "cmlm", repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    saved[HUB_REPO] = saved["cmlm"]
    location = {**{objective: str(root / objective) for objective in METHODS}, HUB_REPO: HUB_REPO}
    keys = list(saved)
    results = load_in_fresh_process([(location[key], list(saved[key][1])) for key in keys], root / "hf")
    assert len(results) == len(keys)
    return {key: (*saved[key], results[index]) for index, key in enumerate(keys)}


@pytest.mark.parametrize("objective", sorted(METHODS))
def test_remote_code_load_from_a_directory(remote_loads, objective):
    expected, options, result = remote_loads[objective]
    assert result["module"].startswith("transformers_modules.")
    assert result["objective"] == objective
    assert result["ids"] == expected
    assert result["options"] == options


def test_non_default_options_move_the_generation_config():
    model = NATForConditionalGeneration(NATConfig(**TINY))
    assert non_default_options(model) == {"num_iterations": 11, "length_beam": 6}


def test_remote_code_load_by_repo_id_from_an_offline_hub_cache(remote_loads):
    expected, options, result = remote_loads[HUB_REPO]
    assert result["module"].startswith("transformers_modules.")
    assert result["objective"] == "cmlm"
    assert result["ids"] == expected
    assert result["options"] == options == {"num_iterations": 11, "length_beam": 6,
                                            "decoding_strategy": "mask_predict"}
