"""What an unlearning run measured and did, as one typed object: the printout, the model card, the results file and
the benchmark all read it, so a figure has one name everywhere.

Accuracies are in percent. "forget" figures are on the forgotten classes, "retain" ones on every other class; "test"
ones on the evaluation split (A_Df = `forget_test_accuracy`, A_Dr = `retain_test_accuracy`), "train" ones on the
training images of the forgotten classes, S_n, the only data PBU trains on.
"""

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .io.atomic import write_text

RESULTS_FILE = "unlearning_results.json"


@dataclass
class Measurement:
    """One model measured on a run's splits; None where a split is empty or absent (e.g. forget-only data)."""

    forget_test_accuracy: float | None = None  # A_Df
    retain_test_accuracy: float | None = None  # A_Dr
    forget_train_accuracy: float | None = None
    # Share (%) of the forget-train images that each membership-inference attack calls members.
    mia: dict[str, float] | None = None


@dataclass
class UnlearningResults:
    """A run: what was forgotten, on which data, with what, at what cost, and the measurements before and after
    (None when the run was not measured, e.g. a `PBUTrainer` used without `hf_pbu.unlearning.unlearn`)."""

    forget_classes: list[int]
    forget_train_samples: int
    forget_loss: str
    steps: int
    stopped_at_step: int | None = None
    # Whether the run forgot: the forget-train accuracy at the end at or below `stop_forget_accuracy` (None: not
    # judged). A run that did not forget is kept, marked, and not pushed.
    forgotten: bool | None = None
    before: Measurement | None = None
    after: Measurement | None = None
    eval_split: str | None = None
    eval_holdout_fraction: float = 0.0
    fisher_estimator: str | None = None
    # Seconds the Fisher's computation took, wherever it came from: "computed" in this run, "resumed" from partial
    # sums (the time before the interruption included), "cached" (as recorded when computed), "given" by the caller
    # (0), "not needed" (beta = 0).
    fisher_seconds: float = 0.0
    fisher_source: str = "computed"
    fisher_memory_budget_bytes: int | None = None
    fisher_peak_memory_bytes: int | None = None
    unlearn_seconds: float = float("nan")  # after a resume, the time before the checkpoint included
    resumed_from_step: int | None = None  # the checkpoint's step, when the run resumed one
    resumed_seconds: float = 0.0  # the part of `unlearn_seconds` spent before that checkpoint
    stop_check_seconds: float = 0.0
    # Retained classes whose test accuracy fell by more than `retained_drop_warning` points: {"id", "name",
    # "before", "after"} each, the largest fall first (None: not measured).
    collapsed_classes: list[dict[str, Any]] | None = None
    retained_drop_warning: float | None = None
    evidence: dict[str, Any] | None = field(default=None)
    evidence_error: str | None = None  # the evidence step failed after the model was saved: why

    def collapsed_text(self) -> str:
        """The sentence naming the retained classes that lost more than `retained_drop_warning` points ("" if none)."""
        if not self.collapsed_classes:
            return ""
        lost = ", ".join(f"{item['name']} {item['before']:.2f}% -> {item['after']:.2f}%"
                         for item in self.collapsed_classes)
        return (f"WARNING: {len(self.collapsed_classes)} retained class(es) lost more than "
                f"{self.retained_drop_warning:g} points of test accuracy: {lost}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UnlearningResults":
        measured = {key: Measurement(**data[key]) if data.get(key) is not None else None
                    for key in ("before", "after")}
        return cls(**{**data, **measured})

    def save(self, output_dir: str) -> str:
        """Write `output_dir/unlearning_results.json` (atomically: whole, or the previous file left as it was);
        returns its path."""
        path = os.path.join(output_dir, RESULTS_FILE)
        write_text(path, json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str) -> "UnlearningResults":
        """From a results file, or the folder holding one."""
        if os.path.isdir(path):
            path = os.path.join(path, RESULTS_FILE)
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def format_table(self) -> str:
        """Before/after table of A_Df, A_Dr, forget-train accuracy and the attacks, the split they were measured on,
        and the Fisher and unlearning times."""

        def pct(value: float | None) -> str:
            return "   n/a" if value is None else f"{value:6.2f}"

        before, after = self.before or Measurement(), self.after or Measurement()
        rows = ["                         before    after"]
        for label, key in (("A_Df (forget test, %)", "forget_test_accuracy"),
                           ("A_Dr (retain test, %)", "retain_test_accuracy"),
                           ("forget train (%)", "forget_train_accuracy")):
            rows.append(f"{label:25}{pct(getattr(before, key))}   {pct(getattr(after, key))}")
        for attack in (before.mia or {}):
            if after.mia and attack in after.mia:
                rows.append(f"MIA {attack + ' (%)':21}{pct(before.mia[attack])}   {pct(after.mia[attack])}")
        if self.eval_split and before.retain_test_accuracy is not None:
            rows.append(f"test sets: the {self.eval_split!r} split"
                        + (" (part held out)" if self.eval_holdout_fraction else ""))
        if self.collapsed_classes:
            rows.append(self.collapsed_text())
        from .evidence.suite import suite_rows  # the evidence package measures into these records: imported late

        evidence = self.evidence or {}
        for row in suite_rows(evidence.get("attacks") or {}):
            rows.append(f"{'A_Df, ' + row['name'] + ' (%)':25}{pct(row['before'])}   {pct(row['after'])}")
        if "forgetting_level" in evidence:
            level = evidence["forgetting_level"]
            strongest = f"; strongest: {level['strongest']}" if level.get("strongest") else ""
            rows.append(f"Forgotten: {level['level']} ({level['text']}{strongest})")
        fisher_note = {"cached": " (cached)", "resumed": " (resumed)"}.get(self.fisher_source, "")
        resumed = f", resumed at step {self.resumed_from_step}" if self.resumed_from_step is not None else ""
        rows.append(f"Fisher: {self.fisher_seconds:.1f} s{fisher_note}   unlearning: {self.unlearn_seconds:.1f} s "
                    f"({self.steps} steps{resumed})")
        return "\n".join(rows)
