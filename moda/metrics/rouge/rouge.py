"""ROUGE-1/2/L F-measures (rouge_score), loadable offline with `evaluate.load("metrics/rouge")`.

Only the scores that need no nltk data: the Hub's `rougeLsum` splits sentences with nltk punkt, which can't be
downloaded here, and captions are one sentence anyway.
"""

import datasets
import evaluate
from rouge_score import rouge_scorer


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

_DESCRIPTION = """ROUGE-1, ROUGE-2 and ROUGE-L (longest common subsequence) F-measures from Google's rouge_score,
averaged over predictions. With several references per prediction the best-matching one counts. `use_stemmer`
applies the Porter stemmer (no downloaded data needed)."""


class Rouge(evaluate.Metric):
    """Mean ROUGE F-measures under the Hub's key names (`rouge1`, `rouge2`, `rougeL`)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, ROUGE: A Package for Automatic Evaluation of Summaries, ACL Workshop 2004.",
            inputs_description="predictions: list of str; references: list of str or list of list of str.",
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
        )

    def _compute(self, predictions: list[str], references: list, use_stemmer: bool = False) -> dict:
        scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
        totals = dict.fromkeys(ROUGE_TYPES, 0.0)
        for prediction, reference in zip(predictions, references):
            reference_list = [reference] if isinstance(reference, str) else list(reference)
            scores = scorer.score_multi(reference_list, prediction)
            for rouge_type in ROUGE_TYPES:
                totals[rouge_type] += scores[rouge_type].fmeasure
        return {rouge_type: total / len(predictions) for rouge_type, total in totals.items()}
