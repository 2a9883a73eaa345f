"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`), fetched for the installed version.

The transformers wheel does not ship its tests; its sdist ships `tests/test_modeling_common.py` and
`tests/test_configuration_common.py` but not the three modules they import (`tests/exporters/test_export.py`,
`tests/generation/test_utils.py`, `tests/utils/test_configuration_utils.py`; checked on 5.24). `load()` downloads
the sdist of the INSTALLED version once (`pip download --no-binary :all: --no-deps`), extracts only those two files
into `~/.cache/nat-hf/transformers-tests-<version>/transformers_tests/` (override the root with
`NAT_TRANSFORMERS_TESTS_CACHE`) and imports them as the package `transformers_tests`. The missing modules are
replaced by stand-ins written here, not copies:

- `ExportTesterMixin`: empty. transformers' export tests are not run; `tests/test_modeling_nat_common.py` has its
  own `torch.export` tests.
- `GenerationTesterMixin`: empty. Its tests are autoregressive decoding (greedy, beam, sampling, caches); NAT
  `generate` is parallel and is tested in `tests/test_modeling_nat.py`.
- `config_common_kwargs`: generic `PreTrainedConfig` arguments with non-default values (`STAND_IN_CONFIG_KWARGS`),
  which `ConfigTester.check_config_arguments_init` checks are stored.

When the sdist cannot be fetched (no network, no pip), `load()` raises `TransformersTestsUnavailable` with the
command to run: the common tests are an error, never a silent skip.
"""

import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

import pytest
import transformers

PACKAGE = "transformers_tests"
FILES = ("tests/test_modeling_common.py", "tests/test_configuration_common.py")
STAND_IN_CONFIG_KWARGS = {
    "output_hidden_states": True,
    "output_attentions": True,
    "return_dict": False,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["NATForConditionalGeneration"],
    "id2label": {0: "A", 1: "B"},
    "problem_type": "single_label_classification",
}
STAND_INS = {
    "__init__.py": '"""transformers\' common tests from its sdist (nat-hf tests/transformers_test_sources.py)."""\n',
    "exporters/__init__.py": "",
    "exporters/test_export.py": (
        '"""Stand-in (nat-hf): the sdist lacks this module; its export tests are not run."""\n\n\n'
        "class ExportTesterMixin:\n    pass\n"
    ),
    "generation/__init__.py": "",
    "generation/test_utils.py": (
        '"""Stand-in (nat-hf): the sdist lacks this module; autoregressive generation tests do not apply."""\n\n\n'
        "class GenerationTesterMixin:\n    pass\n"
    ),
    "utils/__init__.py": "",
    "utils/test_configuration_utils.py": (
        '"""Stand-in (nat-hf): the sdist lacks this module."""\n\n'
        f"config_common_kwargs = {STAND_IN_CONFIG_KWARGS!r}\n"
    ),
}


class TransformersTestsUnavailable(RuntimeError):
    """transformers' test sources for the installed version could not be fetched."""


def cache_root() -> Path:
    """Where the extracted tests live, one folder per transformers version."""
    default = Path.home() / ".cache" / "nat-hf"
    root = Path(os.environ.get("NAT_TRANSFORMERS_TESTS_CACHE", default))
    return root / f"transformers-tests-{transformers.__version__}"


def fetch(root: Path) -> None:
    """Download the sdist of the installed transformers and extract `FILES` plus the stand-ins under `root`."""
    version = transformers.__version__
    with tempfile.TemporaryDirectory() as download:
        command = [sys.executable, "-m", "pip", "download", f"transformers=={version}", "--no-binary", ":all:",
                   "--no-deps", "-d", download]
        result = subprocess.run(command, capture_output=True, text=True)
        archives = list(Path(download).glob("transformers-*.tar.gz"))
        if result.returncode != 0 or not archives:
            raise TransformersTestsUnavailable(
                f"could not download the transformers {version} sdist (needed for its common model tests): "
                f"`{' '.join(command)}` said:\n{result.stderr[-2000:]}"
            )
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=".staging-"))
        try:
            extract(archives[0], version, staging / PACKAGE)
            staging.rename(root)  # atomic: a half-extracted cache is never seen
        except OSError:
            if not root.is_dir():  # not a concurrent fetch that finished first
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def extract(archive_path: Path, version: str, package: Path) -> None:
    """Write `FILES` from the sdist and the stand-in modules into `package`."""
    with tarfile.open(archive_path) as archive:
        for relative in FILES:
            try:
                member = archive.extractfile(f"transformers-{version}/{relative}")
            except KeyError:
                member = None
            if member is None:
                raise TransformersTestsUnavailable(f"the transformers {version} sdist has no {relative}")
            target = package / Path(relative).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(member.read())
    for relative, text in STAND_INS.items():
        target = package / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def load() -> tuple[ModuleType, ModuleType]:
    """`(test_modeling_common, test_configuration_common)` of the installed transformers version."""
    root = cache_root()
    if not (root / PACKAGE / FILES[0].split("/")[-1]).is_file():
        fetch(root)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        with warnings.catch_warnings():  # transformers' own pytest marks (flash_attn_test, ...) are unregistered here
            warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
            modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
            configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    except ImportError as error:
        raise TransformersTestsUnavailable(
            f"transformers' common tests (in {root}) failed to import: {error}. Install the test extras: "
            "pip install -e '.[dev]'"
        ) from error
    return modeling, configuration
