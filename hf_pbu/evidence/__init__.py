"""What a run measures: A_Df, A_Dr and membership inference (`measure`, `mia`), and the evidence of where a class was
forgotten (`collect`): the per-class view, the attacks that start from the weights and the linear probe."""

from .attacks import head_relearn_attack, prototype_attack, relearn_attack, relearn_set
from .collect import attack_evidence, collect_evidence, forgetting_level
from .features import HeadInputs, head_inputs, penultimate_features
from .measurement import accuracy, measure, predictions
from .per_class import forget_confusion, per_class_accuracy, plot_per_class_accuracy
from .probe import linear_probe

__all__ = [
    "HeadInputs", "accuracy", "attack_evidence", "collect_evidence", "forget_confusion", "forgetting_level",
    "head_inputs", "head_relearn_attack", "linear_probe", "measure", "penultimate_features", "per_class_accuracy",
    "plot_per_class_accuracy", "predictions", "prototype_attack", "relearn_attack", "relearn_set",
]
