"""The attack suite: every attack a run, a benchmark or a reader uses to ask whether a forgotten class is still in
the weights, described once (`SUITE`), run the same way on every model (the original, the unlearned one, the retrain
oracle) and read the same way (`forgetting_level`).

Each attack starts from the weights, as someone holding the model could, and reports the forgotten classes' test
accuracy after it (`forget_test_accuracy`, %). None has an absolute scale: a model retrained without the class (the
oracle) reads well above 0 under several of them, because its features may still set a distinctive class apart and a
few images teach it the class. Read each figure against the oracle's (`benchmarks/RESULTS.md`), from both sides: far
above it, the class is still there; far below, the model refuses to learn what a never-trained model learns, which is
a fingerprint too.

Two kinds, by what they reach through:

* `row`: the attack rebuilds the class through its own head row (kept, re-centred or fine-tuned): the image-free
  re-centre, and the head-only and whole-model relearns (their first step gives the class the average bias). A class
  one of them brings back was removed at the output only.
* `features`: the attack ignores the class's row (replaced by the retained rows' mean, by a prototype, or a probe
  fitted from scratch) and reads the penultimate features alone. A class one of them brings back is gone from the
  head but still set apart by the features.

The cheap attacks (features computed once, no backbone training) run on every run; the costly ones (a linear probe on
100 images per class, the whole-model relearns) with `--evidence`.

A run has no oracle, so its verdict (`forgetting_level`) is read off the attacks under which a model that never saw
the class reads near 0 (`Attack.decides_level`): a class they bring back is unambiguously still there. The others
(the probes, the strong relearns, and the weak whole-model relearn) teach a never-trained model the class from 10
images too: on the tests' digits CNN the oracle reads 83% under the strong head relearn against the original's 95%,
and on the digits benchmark model 92% under even the weak whole-model relearn. They are reported, and the benchmark
reads them against the oracle's own figures (`benchmarks/feature_forgetting.py`), but they decide nothing alone.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn
from torch.utils.data import Dataset
from transformers.utils import logging

from .attacks import (
    RELEARN_LEARNING_RATE,
    RELEARN_STEPS,
    check_head_reads_features,
    head_relearn_from_features,
    image_free_attack,
    prototype_from_features,
    relearn_attack,
    relearn_set,
)
from .features import HeadInputs, head_inputs
from .probe import k_shot_probe

logger = logging.get_logger(__name__)

Reach = Literal["row", "features"]


@dataclass(frozen=True)
class Attack:
    """One attack of the suite: its key in the results, what the card and the console call it, what it reaches
    through (`Reach`), whether it runs only with `--evidence`, and its settings."""

    name: str
    label: str
    reach: Reach
    costly: bool
    decides_level: bool = True  # False: a model retrained without the class reads high too; read it against the oracle
    k: int = 10  # training images per class it reads (0: none)
    steps: int = 0
    learning_rate: float = 0.0


# The relearn attacks' strong budgets: an attacker who fine-tunes as a practitioner would, not as gently as possible.
STRONG_HEAD_STEPS, STRONG_HEAD_LEARNING_RATE = 300, 1e-2
STRONG_RELEARN_STEPS, STRONG_RELEARN_LEARNING_RATE = 100, 1e-3

SUITE: tuple[Attack, ...] = (
    Attack("recentre_row", "Image-free: the class's head row re-centred on the retained rows' mean coordinate, with "
           "their mean bias", "row", costly=False, k=0),
    Attack("mean_row", "Image-free: the class's head row replaced by the retained rows' mean, with their mean bias",
           "features", costly=False, k=0),
    Attack("prototype", "Prototype: the class's head row rebuilt from the mean feature of 5 of its images",
           "features", costly=False, k=5),
    Attack("probe_k10", "Linear probe: logistic regression on the features of 10 training images per class",
           "features", costly=False, decides_level=False, k=10),
    Attack("probe_k100", "Linear probe: logistic regression on the features of 100 training images per class",
           "features", costly=True, decides_level=False, k=100),
    Attack("head_relearn", f"Head-only relearn: {RELEARN_STEPS} steps at lr {RELEARN_LEARNING_RATE:g} on 10 images "
           "per class", "row", costly=False, steps=RELEARN_STEPS, learning_rate=RELEARN_LEARNING_RATE),
    Attack("head_relearn_strong", f"Head-only relearn, strong: {STRONG_HEAD_STEPS} steps at lr "
           f"{STRONG_HEAD_LEARNING_RATE:g} on 10 images per class", "row", costly=False, decides_level=False,
           steps=STRONG_HEAD_STEPS, learning_rate=STRONG_HEAD_LEARNING_RATE),
    # Calibrated on the oracle: on digits (demo recipe) a model retrained without the class reads 92% under it (the
    # original 99%; mean over every class), so it cannot tell the two apart there and decides nothing
    # (benchmarks/RESULTS.md).
    Attack("relearn", f"Whole-model relearn: {RELEARN_STEPS} steps at lr {RELEARN_LEARNING_RATE:g} on 10 images per "
           "class", "row", costly=True, decides_level=False, steps=RELEARN_STEPS,
           learning_rate=RELEARN_LEARNING_RATE),
    Attack("relearn_strong", f"Whole-model relearn, strong: {STRONG_RELEARN_STEPS} steps at lr "
           f"{STRONG_RELEARN_LEARNING_RATE:g} on 10 images per class", "row", costly=True,
           decides_level=False, steps=STRONG_RELEARN_STEPS, learning_rate=STRONG_RELEARN_LEARNING_RATE),
)
ATTACKS = {attack.name: attack for attack in SUITE}


def attacks_to_run(costly: bool) -> list[Attack]:
    """The attacks a run makes: the cheap ones, and with `costly` every one."""
    return [attack for attack in SUITE if costly or not attack.costly]


class _Inputs:
    """What the attacks read on one model, each computed once when first needed: the relearn sets (k images per class
    of forget_train and retain_train) and their features, and the test splits' features."""

    def __init__(self, model: nn.Module, splits: dict[str, Dataset], seed: int):
        self.model, self.splits, self.seed = model, splits, seed
        self._sets: dict[int, Dataset] = {}
        self._features: dict[str, HeadInputs] = {}

    def relearn_set(self, k: int) -> Dataset:
        if k not in self._sets:
            self._sets[k] = relearn_set(self.splits["forget_train"], self.splits["retain_train"], k, self.seed)
        return self._sets[k]

    def features(self, name: str | int) -> HeadInputs:
        key = str(name)
        if key not in self._features:
            dataset = self.relearn_set(name) if isinstance(name, int) else self.splits[name]
            self._features[key] = head_inputs(self.model, dataset)
        return self._features[key]


def _run(attack: Attack, inputs: _Inputs, forget_classes: Sequence[int]) -> dict:
    model, seed = inputs.model, inputs.seed
    tests = (inputs.features("forget_test"), inputs.features("retain_test"))
    if attack.name in ("recentre_row", "mean_row"):
        return image_free_attack(model, *tests, forget_classes=forget_classes,
                                 how="recentre" if attack.name == "recentre_row" else "mean")
    if attack.name == "prototype":
        return prototype_from_features(model, inputs.features(10), *tests, forget_classes=forget_classes,
                                       count=attack.k)
    if attack.name.startswith("probe"):
        return k_shot_probe(inputs.features(attack.k), *tests, forget_classes=forget_classes, seed=seed)
    if attack.name.startswith("head_relearn"):
        return head_relearn_from_features(model, inputs.features(attack.k), *tests, forget_classes=forget_classes,
                                          steps=attack.steps, learning_rate=attack.learning_rate, seed=seed)
    return relearn_attack(model, inputs.relearn_set(attack.k), inputs.splits["forget_test"],
                          inputs.splits["retain_test"], forget_classes=forget_classes, steps=attack.steps,
                          learning_rate=attack.learning_rate, seed=seed)


def run_suite(model: nn.Module, splits: dict[str, Dataset], forget_classes: Sequence[int], seed: int = 0,
              costly: bool = False, only: Sequence[str] | None = None) -> dict[str, dict]:
    """{attack name: its result} on one model, for the attacks of `attacks_to_run(costly)` (or those named in
    `only`), from the splits forget_train, retain_train (a sample of the retained training images: the relearn sets'
    retained half), forget_test and retain_test. Each result holds "forget_test_accuracy" (after the attack),
    "retain_test_accuracy" and "seconds". Empty, with a warning, for a model whose head does not read its penultimate
    features alone (the head attacks cannot run on it)."""
    try:
        check_head_reads_features(model, splits["forget_test"])
    except ValueError as err:
        logger.warning(f"{err} The attacks are skipped.")
        return {}
    inputs = _Inputs(model, splits, seed)
    chosen = [ATTACKS[name] for name in only] if only is not None else attacks_to_run(costly)
    found = {}
    for attack in chosen:
        start = time.perf_counter()
        found[attack.name] = {**_run(attack, inputs, [int(c) for c in forget_classes]),
                              "seconds": time.perf_counter() - start}
    return found


def recovered_share(result: dict) -> float | None:
    """The share of the original's figure an attack brings back on the unlearned model: after / before, where
    `result` = {"before": on the original, "after": on the unlearned model}; None when the original reads 0."""
    original, unlearned = result["before"]["forget_test_accuracy"], result["after"]["forget_test_accuracy"]
    return None if not original else unlearned / original


# An attack brings the class back when it recovers at least this share of what it recovers on the original model.
RECOVERED_SHARE = 0.5
LEVEL_TEXT = {
    "output": "forgotten at the output only: an attack through the class's own head row brings it back",
    "head": "forgotten in the head: no attack through its head row brings it back, but the features still set it "
            "apart",
    "features": "forgotten in the features: no attack that decides the level brings back as much as half of what "
                "it brings back on the original model",
}


def forgetting_level(attacks: dict[str, dict]) -> dict | None:
    """Where the class was forgotten, read off the suite's results ({name: {"before", "after"}}; None without any):
    "output" when an attack that reaches through the class's head row brings back at least `RECOVERED_SHARE` of what
    it brings back on the original; else "head" when an attack on the features alone does; else "features"; only
    the attacks that decide a level count (`Attack.decides_level`). Returns {"level", "text", "strongest" (the attack
    that brings back the largest share, among those that set the level; None at "features"), "recovered":
    {attack: share, for every attack run}, "attacks_run": [names]}.

    A model retrained without the class is the real reference, and a run does not have it: its features may still set
    a distinctive class apart, and a strong relearn teaches it the class from 10 images. Read the level with the
    oracle's figures (`benchmarks/RESULTS.md`)."""
    recovered = {name: share for name, result in attacks.items() if (share := recovered_share(result)) is not None}
    if not recovered:
        return None
    back = {name: share for name, share in recovered.items()
            if share >= RECOVERED_SHARE and ATTACKS[name].decides_level}
    through_row = {name: share for name, share in back.items() if ATTACKS[name].reach == "row"}
    if through_row:
        level, back = "output", through_row  # the strongest named is one that sets the level
    elif back:
        level = "head"
    else:
        level = "features"
    strongest = max(back, key=back.get) if back else None
    return {"level": level, "text": LEVEL_TEXT[level], "strongest": strongest, "recovered": recovered,
            "attacks_run": list(attacks)}


LEVELS = ("output", "head", "features")  # from least to most forgotten


def below_level(level: dict | None, required: str) -> bool:
    """Whether the attacks found the class forgotten at a lower level than `required` (False without attacks)."""
    return level is not None and LEVELS.index(level["level"]) < LEVELS.index(required)


def suite_rows(attacks: dict[str, dict]) -> list[dict]:
    """Rows {name, label, reach, decides_level, before, after} of the attacks that were run, in the suite's order:
    what the card's and the console's tables show (accuracies in %, the original before, the unlearned model after)."""
    return [{"name": attack.name, "label": attack.label, "reach": attack.reach, "decides_level": attack.decides_level,
             "before": attacks[attack.name]["before"]["forget_test_accuracy"],
             "after": attacks[attack.name]["after"]["forget_test_accuracy"]}
            for attack in SUITE if attack.name in attacks]
