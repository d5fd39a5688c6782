"""A run's evidence that a class is really forgotten, beyond the output accuracy A_Df, for the results and the card.

A model can score 0% on a class at its output while the weights still hold it: masking the class's logit does that
with no unlearning at all. `collect_evidence` looks past the argmax, on the original and the unlearned model: the
per-class view and chart (`per_class`), the attack suite (`suite`), and where the class was forgotten, read off the
attacks (`suite.forgetting_level`). None of these has an absolute scale: read each against the
retrain oracle (the goal: as close to it as possible) and against the logit-masked original (the class fully present).
"""

import os
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers.utils import logging

from .per_class import (
    chart_class_ids,
    chart_font_draws,
    forget_confusion,
    per_class_accuracy,
    plot_per_class_accuracy,
)
from .suite import forgetting_level, run_suite

logger = logging.get_logger(__name__)

CHART_FILE = "per_class_accuracy.png"


def collect_evidence(
    original: nn.Module,
    unlearned: nn.Module,
    splits: dict[str, Dataset],
    outputs: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]],
    forget_classes: Sequence[int],
    names: Sequence[str],
    output_dir: str | None,
    costly: bool,
    seed: int = 0,
) -> dict:
    """A run's evidence, for the results file and the card: per-class test accuracy before and after (and its chart,
    written to `output_dir`), the forgotten classes' confusion before and after, the attack suite
    (`hf_pbu.evidence.suite`: its cheap attacks, and with `costly` every one) on the original and the unlearned
    model, as {"attacks": {name: {"before", "after"}}}, and where the class was forgotten, read off them
    (`forgetting_level`).

    `outputs` holds the prediction passes already made ({"before"/"after": {split: (logits, labels)}}); the attacks
    need retained training images (`splits["retain_train"]`) and are skipped without them.
    """
    tests = [name for name in ("forget_test", "retain_test") if name in outputs["after"]]
    evidence: dict = {}
    if tests:
        per_class, confusion = {}, {}
        for when in ("before", "after"):
            logits, labels = (torch.cat(parts) for parts in zip(*(outputs[when][name] for name in tests)))
            per_class[when] = per_class_accuracy(logits, labels, len(names))
            confusion[when] = forget_confusion(logits, labels, forget_classes, names)
        evidence.update(per_class_accuracy=per_class, forget_confusion=confusion)
        if output_dir is not None:
            os.makedirs(output_dir, exist_ok=True)
            shown = chart_class_ids(per_class["before"], per_class["after"], names, forget_classes)
            by_id = not chart_font_draws([names[c] for c in shown])  # then ids on the axis, names in the card
            plot_per_class_accuracy(per_class["before"], per_class["after"], names, forget_classes,
                                    os.path.join(output_dir, CHART_FILE), by_id=by_id)
            evidence["chart"] = CHART_FILE
            if by_id:
                evidence["chart_class_ids"] = shown
    needed = ("forget_train", "retain_train", "forget_test", "retain_test")
    if not all(name in splits and len(splits[name]) for name in needed):
        logger.warning("The attacks need retained training and test images: skipped.")
        return evidence
    found = {when: run_suite(model, splits, forget_classes, seed, costly)
             for when, model in (("before", original), ("after", unlearned))}
    evidence["attacks"] = {name: {when: found[when][name] for when in found} for name in found["after"]
                           if name in found["before"]}
    level = forgetting_level(evidence["attacks"])
    if level is not None:
        evidence["forgetting_level"] = level
    return evidence
