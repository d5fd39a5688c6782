"""Unlearning accuracy: A_Df (accuracy on the forgotten classes) and A_Dr (accuracy on the retained classes).

Load it offline by path: `evaluate.load("metrics/unlearning_accuracy")`.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Class unlearning is judged by two accuracies on held-out data: A_Df, the accuracy on samples of the forgotten
class(es), which should fall to chance or below, and A_Dr, the accuracy on every other sample, which should stay
where it was before unlearning. Both are in percent; a side with no samples is reported as None.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
    forget_classes (`list` of `int`): the class ids that were unlearned.
Returns:
    forget_accuracy (`float` or `None`): A_Df, percent of correct predictions on samples of the forget classes.
    retain_accuracy (`float` or `None`): A_Dr, percent of correct predictions on all other samples.
    forget_samples (`int`), retain_samples (`int`): how many samples each figure is based on.
Examples:
    >>> metric = evaluate.load("metrics/unlearning_accuracy")
    >>> metric.compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2], forget_classes=[1])
    {'forget_accuracy': 50.0, 'retain_accuracy': 100.0, 'forget_samples': 2, 'retain_samples': 2}
"""

_CITATION = """
@inproceedings{panda2025partially,
  title     = {Partially Blinded Unlearning: Class Unlearning for Deep Networks a Bayesian Perspective},
  author    = {Panda, Subhodip and Sourav, Shashwat and Prathosh, A. P.},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  volume    = {39},
  number    = {6},
  year      = {2025},
  note      = {arXiv:2403.16246}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class UnlearningAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, forget_classes=None):
        if not forget_classes:
            raise ValueError("Pass `forget_classes`, the class ids that were unlearned.")
        predictions, references = np.asarray(predictions), np.asarray(references)
        forget = np.isin(references, list(forget_classes))
        correct = predictions == references

        def percent(mask):
            return float(100.0 * correct[mask].mean()) if mask.any() else None

        return {
            "forget_accuracy": percent(forget),
            "retain_accuracy": percent(~forget),
            "forget_samples": int(forget.sum()),
            "retain_samples": int((~forget).sum()),
        }
