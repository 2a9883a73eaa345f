"""Metric modules shipped with the package, for `evaluate.load(path)` without the Hub."""

from pathlib import Path

SACREBLEU_PATH = str(Path(__file__).parent / "nat_sacrebleu")


def load_sacrebleu():
    """The offline sacreBLEU/chrF `evaluate` metric (imports `evaluate` lazily: it is slow to import)."""
    import evaluate

    return evaluate.load(SACREBLEU_PATH)
