"""Metric modules shipped with the package, for `evaluate.load(path)` without the Hub."""

from pathlib import Path

SACREBLEU_PATH = str(Path(__file__).parent / "nat_sacrebleu")


def load_sacrebleu():
    """The offline sacreBLEU/chrF `evaluate` metric (imports `evaluate` lazily: it is slow to import)."""
    import evaluate

    return evaluate.load(SACREBLEU_PATH)


def bleu_for_trainer(tokenizer):
    """A `compute_metrics` for `Seq2SeqTrainer(predict_with_generate=True)`: decodes the generated ids and the
    labels (-100 padding, which Trainer adds, replaced by the pad id) and returns corpus BLEU and chrF."""
    import numpy as np

    metric = load_sacrebleu()

    def compute_metrics(eval_prediction) -> dict[str, float]:
        predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        predictions = np.where(predictions == -100, tokenizer.pad_token_id, predictions)
        labels = np.where(labels == -100, tokenizer.pad_token_id, labels)
        hypotheses = tokenizer.batch_decode(predictions, skip_special_tokens=True)
        references = tokenizer.batch_decode(labels, skip_special_tokens=True)
        scores = metric.compute(predictions=hypotheses, references=references)
        return {"bleu": scores["bleu"], "chrf": scores["chrf"]}

    return compute_metrics
