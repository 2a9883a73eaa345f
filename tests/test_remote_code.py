"""A saved model must load through `trust_remote_code` in a process where `nat_hf` cannot be imported: from a
directory, and by repo id from an offline Hub-style cache."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

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
print(json.dumps({"module": type(model).__module__, "ids": output.tolist(),
                  "num_iterations": model.generation_config.num_iterations}))
"""

SOURCES = [[5, 6, 7, 8, 1], [9, 10, 1, 0, 0]]


def load_in_fresh_process(name_or_path: str, hf_home) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_GENERATE, name_or_path, json.dumps(SOURCES)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def saved_model(tmp_path, tiny_model):
    tiny_model.generation_config.num_iterations = 3
    directory = tmp_path / "model"
    tiny_model.save_pretrained(directory)
    expected = tiny_model.generate(torch.tensor(SOURCES)).tolist()
    return directory, expected


def test_remote_code_load_from_a_directory(tmp_path, saved_model):
    directory, expected = saved_model
    result = load_in_fresh_process(str(directory), tmp_path / "hf")
    assert result["module"].startswith("transformers_modules.")
    assert result["ids"] == expected
    assert result["num_iterations"] == 3


def test_remote_code_load_by_repo_id_from_an_offline_hub_cache(tmp_path, saved_model):
    directory, expected = saved_model
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--nat-hf--tiny-test"
    shutil.copytree(directory, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    result = load_in_fresh_process("nat-hf/tiny-test", tmp_path / "hf")
    assert result["module"].startswith("transformers_modules.")
    assert result["ids"] == expected
    assert result["num_iterations"] == 3
