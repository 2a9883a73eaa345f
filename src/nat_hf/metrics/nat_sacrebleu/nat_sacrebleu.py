"""sacreBLEU and chrF as an `evaluate` metric that loads offline: `evaluate.load(nat_hf.metrics.SACREBLEU_PATH)`.

The Hub's `sacrebleu` metric cannot be fetched offline; this module computes the same corpus scores with the
`sacrebleu` package (cased, detokenised input, default 13a tokenisation).
"""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = "Corpus BLEU and chrF of detokenised hypotheses against one reference each, computed by sacrebleu."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of hypothesis strings.
    references: list of reference strings (one per prediction).
Returns:
    bleu: corpus BLEU (0-100); chrf: corpus chrF (0-100); signature: the sacrebleu BLEU signature.
"""
_CITATION = """@inproceedings{post-2018-call,
  title = "A Call for Clarity in Reporting {BLEU} Scores",
  author = "Post, Matt",
  booktitle = "Proceedings of the Third Conference on Machine Translation",
  year = "2018",
}"""


class NatSacrebleu(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        bleu = sacrebleu.metrics.BLEU()
        score = bleu.corpus_score(predictions, [references])
        chrf = sacrebleu.metrics.CHRF().corpus_score(predictions, [references])
        return {"bleu": score.score, "chrf": chrf.score, "signature": str(bleu.get_signature())}
