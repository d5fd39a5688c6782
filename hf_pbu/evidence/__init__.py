"""What a run measures: A_Df, A_Dr and membership inference (`measure`, `mia`), and the evidence of where a class was
forgotten (`collect`): the per-class view and the attack suite (`suite`), the attacks that start from the weights."""

from .attacks import head_relearn_attack, image_free_attack, prototype_attack, relearn_attack, relearn_set
from .collect import collect_evidence
from .features import HeadInputs, head_inputs, penultimate_features
from .measurement import accuracy, measure, predictions
from .per_class import forget_confusion, per_class_accuracy, plot_per_class_accuracy
from .probe import k_shot_probe
from .suite import ATTACKS, SUITE, Attack, attacks_to_run, forgetting_level, run_suite, suite_rows

__all__ = [
    "ATTACKS", "SUITE", "Attack", "HeadInputs", "accuracy", "attacks_to_run", "collect_evidence", "forget_confusion",
    "forgetting_level", "head_inputs", "head_relearn_attack", "image_free_attack", "k_shot_probe", "measure",
    "penultimate_features", "per_class_accuracy", "plot_per_class_accuracy", "predictions", "prototype_attack",
    "relearn_attack", "relearn_set", "run_suite", "suite_rows",
]
