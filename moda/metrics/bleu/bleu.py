"""Corpus BLEU-4 with brevity penalty (sacrebleu, 13a tokens); loads offline: `evaluate.load("metrics/bleu")`."""

import datasets
import evaluate
import sacrebleu


_DESCRIPTION = """Corpus-level BLEU-4 (Papineni et al., 2002) as computed by sacrebleu with its default 13a tokenizer
and exponential smoothing. Each prediction may have one reference string or a list of them (lists may differ in
length).
Returns `bleu` in [0, 1], the n-gram `precisions` in [0, 1], `brevity_penalty`, `length_ratio`,
`translation_length` and `reference_length`."""


class Bleu(evaluate.Metric):
    """BLEU with the same output keys as the Hub's `bleu`, so code written for it keeps working."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Papineni et al., BLEU: a Method for Automatic Evaluation of Machine Translation, ACL 2002.",
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

    def _compute(self, predictions: list[str], references: list) -> dict:
        reference_lists = [[reference] if isinstance(reference, str) else list(reference) for reference in references]
        most_references = max(len(reference_list) for reference_list in reference_lists)
        # sacrebleu wants one stream per reference slot; None marks a missing reference for that prediction.
        streams = [
            [reference_list[slot] if slot < len(reference_list) else None for reference_list in reference_lists]
            for slot in range(most_references)
        ]
        score = sacrebleu.corpus_bleu(predictions, streams)
        return {
            "bleu": score.score / 100,
            "precisions": [precision / 100 for precision in score.precisions],
            "brevity_penalty": score.bp,
            "length_ratio": score.ratio,
            "translation_length": score.sys_len,
            "reference_length": score.ref_len,
        }
