import dataclasses
import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never download
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from nat_hf import NATConfig, NATForConditionalGeneration  # noqa: E402
from nat_hf.methods import METHODS  # noqa: E402

# the suite runs on two cores (README: pytest -n 2, one process per core): each worker takes its share of them
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = int(os.environ.get("NAT_TEST_THREADS", max(1, 2 // WORKERS)))
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Commands run in-process (train, bench, distill, demo) set torch's thread count for their run; the next test
    gets the worker's share back (two workers at two threads each on two cores would wait on each other)."""
    yield
    torch.set_num_threads(THREADS)

TINY = dict(
    vocab_size=40,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    max_source_positions=24,
    max_target_positions=24,
    max_length_offset=6,
    dropout=0.0,
)


@pytest.fixture
def tiny_config() -> NATConfig:
    return NATConfig(**TINY)


@pytest.fixture
def tiny_model(tiny_config) -> NATForConditionalGeneration:
    torch.manual_seed(0)
    return NATForConditionalGeneration(tiny_config).eval()


@pytest.fixture
def source_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three right-padded sources of different lengths, each closed by end-of-sentence (1)."""
    input_ids = torch.tensor([
        [5, 6, 7, 8, 9, 10, 1],
        [11, 12, 13, 1, 0, 0, 0],
        [14, 15, 16, 17, 1, 0, 0],
    ])
    return input_ids, (input_ids != 0).long()


def write_toy_corpus(directory, sizes=(("train", 400), ("val", 40), ("test", 40))):
    """The demo's toy task (English number words -> sorted German words) in the Multi30k file layout."""
    from nat_hf.demo import make_sentences

    directory.mkdir(parents=True, exist_ok=True)
    for seed, (split, count) in enumerate(sizes):
        pairs = make_sentences(count, seed=seed)
        (directory / f"{split}.en").write_text("\n".join(source for source, _ in pairs) + "\n")
        (directory / f"{split}.de").write_text("\n".join(target for _, target in pairs) + "\n")
    return directory


@pytest.fixture
def toy_corpus(tmp_path):
    return write_toy_corpus(tmp_path / "corpus")


def objective_config_kwargs(objective: str, base: dict | None = None) -> dict:
    """`base` (default TINY) as a config of `objective`, with what its `validate_config` needs: a decoder long
    enough for the upsampled source (`upsample_ratio` of its training options, ctc and dag), and a blank token
    (the last vocabulary id) when the method asks for one (ctc)."""
    kwargs = {**(TINY if base is None else base), "objective": objective}
    training = {option.name: option.default for option in dataclasses.fields(METHODS[objective].TrainingOptions)}
    ratio = training.get("upsample_ratio")
    if ratio is not None:
        kwargs["max_target_positions"] = max(kwargs.get("max_target_positions", 256),
                                             math.ceil(ratio * kwargs.get("max_source_positions", 256)))
    try:
        NATConfig(**kwargs)
    except ValueError as error:
        if "blank_token_id" not in str(error):
            raise
        kwargs["blank_token_id"] = kwargs["vocab_size"] - 1
    return kwargs


def kill_training_after_first_checkpoint(config, overrides: list[str], output_dir) -> dict:
    """Start `python -m nat_hf.train config *overrides` (writing to `output_dir`), SIGKILL it as soon as its first
    checkpoint is on disk, and return that checkpoint's trainer state (the run must not have finished)."""
    import json
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen([sys.executable, "-m", "nat_hf.train", str(config), *overrides],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    state = output_dir / "checkpoints" / "last" / "trainer_state.json"
    deadline = time.time() + 240
    while not state.is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert state.is_file(), "the run never wrote its first checkpoint"
    assert not (output_dir / "results.json").exists(), "the run finished before it could be killed"
    return json.loads(state.read_text())
