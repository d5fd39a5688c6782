"""PBU against the baselines: one cell = (method, forget class or classes, seed) on a trained base model.

A cell's classes are stored as an int (one class) or as a string "0+6" (classes forgotten at once).

A cell copies the base model, runs the method on the data it declares it needs, and measures A_Df (forget test
accuracy), A_Dr (retain test accuracy), the membership-inference rate on the forget training data and the wall time.
`summarise` and `markdown_section` turn the raw records into the paper's table.
"""

import copy
import dataclasses
import hashlib
import json
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from baselines import METHODS
from datasets import DatasetDict
from torch import nn

from hf_pbu.data import split_by_classes, unlearning_splits, with_image_transform
from hf_pbu.evidence import run_suite
from hf_pbu.evidence.measurement import measure

SECTION_TITLE = "## Quality: PBU vs baselines (issue 5)"


Cell = int | str


def parse_study(arguments_class: type) -> tuple[Any, Any]:
    """A study script's own arguments and the `PBUConfig` of its runs (any PBUConfig flag on the command line), its
    runs saving, logging and showing nothing."""
    import sys
    import tempfile

    from transformers import HfArgumentParser

    from hf_pbu import PBUConfig

    parser = HfArgumentParser((arguments_class, PBUConfig))
    return parser.parse_args_into_dataclasses(
        args=sys.argv[1:] + ["--output_dir", tempfile.mkdtemp(), "--save_strategy", "no", "--report_to", "none",
                             "--logging_strategy", "no", "--disable_tqdm", "true"]
    )


def offline_dataset(name: str) -> DatasetDict:
    """The benchmark dataset `name` ("digits" or "fashion_mnist"), offline."""
    from offline_data import DEFAULT_DIR, digits_dataset, fashion_mnist_dataset

    return digits_dataset() if name == "digits" else fashion_mnist_dataset(DEFAULT_DIR)


def parse_cell(text: str) -> Cell:
    """A command-line cell: "3" -> 3, "6+0" -> "0+6" (several classes forgotten at once)."""
    classes = sorted({int(part) for part in str(text).split("+")})
    return classes[0] if len(classes) == 1 else "+".join(map(str, classes))


def cell_classes(cell: Cell) -> list[int]:
    return [int(part) for part in str(cell).split("+")]


def cell_sort_key(cell: Cell) -> tuple[int, list[int]]:
    """Single classes first, in id order, then the groups."""
    return len(cell_classes(cell)), cell_classes(cell)


def cell_name(cell: Cell, names: list[str]) -> str:
    return f"{cell} ({'+'.join(names[c] for c in cell_classes(cell))})"


def cell_splits(data: DatasetDict, transform, cell: Cell, mia_members: int, seed: int = 0) -> dict:
    """Transformed splits of one cell: forget_train, forget_test, retain_test, retain_train (a fixed sample: the MIA's
    members) and retain_train_all (all retained training data, for the methods that need it)."""
    classes = cell_classes(cell)
    splits = unlearning_splits(data, classes, retain_train_samples=mia_members, seed=seed)
    splits["retain_train_all"] = split_by_classes(data["train"], classes)[1]
    return {name: with_image_transform(split, transform) for name, split in splits.items()}


# Options that only one forget term reads: left out of the labels of settings without that term.
TERM_OPTIONS = {"npo_tau": "npo", "distill_weight": "distill"}


def pbu_setting(config: Any) -> dict:
    """What tells two PBU settings apart: every setting that shapes the unlearned weights (`PBUConfig.run_settings`,
    derived from the config's fields, so a new field cannot be left out), as JSON values."""
    return json.loads(json.dumps(config.run_settings()))


def setting_label(setting: dict) -> str:
    """A PBU setting in a table row: its forget term and level, then the settings that differ from the defaults
    (records written before `forget_level` existed ran at 'output')."""
    from hf_pbu import PBUConfig

    defaults = pbu_setting(PBUConfig(output_dir="unused"))
    terms = setting["forget_loss"].split("+")
    changed = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in setting.items()
               if k not in ("forget_loss", "forget_level") and TERM_OPTIONS.get(k, terms[0]) in terms
               and v != defaults.get(k, v)]
    return " ".join([setting["forget_loss"], setting.get("forget_level", "output"), *changed])


def config_summary(config: Any) -> dict:
    """The JSON-friendly fields of a method's config: a PBU run's settings (`pbu_setting`), or a baseline's fields
    with its TrainingArguments recipe reduced to what shapes the run."""
    if hasattr(config, "run_settings"):  # PBUConfig
        return pbu_setting(config)
    summary = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if hasattr(value, "to_dict"):  # a TrainingArguments recipe
            full = value.to_dict()
            value = {k: full[k] for k in ("num_train_epochs", "learning_rate", "per_device_train_batch_size",
                                          "lr_scheduler_type", "weight_decay", "optim")}
        summary[field.name] = value
    return summary


def config_key(summary: dict) -> str:
    return hashlib.sha256(json.dumps(summary, sort_keys=True, default=str).encode()).hexdigest()[:16]


def suite_columns(model: nn.Module, splits: dict, forget_classes: list[int], seed: int) -> dict:
    """Every attack of the suite (`hf_pbu.evidence.run_suite`, the costly ones too) on one model, as columns: A_Df
    after each attack (its name) and A_Dr after it (`<name>_retain`), with the seconds they took."""
    start = time.perf_counter()
    found = run_suite(model, splits, forget_classes, seed, costly=True)
    columns = {}
    for name, result in found.items():
        columns[name] = result["forget_test_accuracy"]
        columns[f"{name}_retain"] = result.get("retain_test_accuracy")
    return {**columns, "seconds": time.perf_counter() - start}


def run_cell(
    method_name: str, config: Any, base_model: nn.Module, splits: dict, eval_batch_size: int, seed: int,
    evidence_classes: list[int] | None = None,
) -> dict:
    """Unlearn with one method on a copy of `base_model` and measure the result (with `evidence_classes`, the
    cell's forget classes, also its `suite_columns`)."""
    method = METHODS[method_name]
    forget = splits["forget_train"] if method.needs_forget else None
    retain = splits["retain_train_all"] if method.needs_retain else None
    model = copy.deepcopy(base_model)
    torch.manual_seed(seed)
    start = time.perf_counter()
    model = method.unlearn(model, forget, retain, config)
    seconds = time.perf_counter() - start
    model.eval()
    record = {**dataclasses.asdict(measure(model, splits, eval_batch_size, seed=seed)), "seconds": seconds}
    if evidence_classes:
        record["evidence"] = suite_columns(model, splits, evidence_classes, seed)
    return record


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def summarise(records: list[dict]) -> dict[tuple[str, int], dict]:
    """Per (method, forget class): mean and std over seeds of every figure, and the seeds used."""
    groups = defaultdict(list)
    for record in records:
        groups[(record["method"], record["forget_class"])].append(record)
    summary = {}
    for key, group in groups.items():
        summary[key] = {
            "seeds": sorted(r["seed"] for r in group),
            "data_needed": group[0]["data_needed"],
            "forget_test_accuracy": mean_std([r["forget_test_accuracy"] for r in group]),
            "retain_test_accuracy": mean_std([r["retain_test_accuracy"] for r in group]),
            "forget_train_accuracy": mean_std([r["forget_train_accuracy"] for r in group]),
            "seconds": mean_std([r["seconds"] for r in group]),
        }
        mias = [r["mia"] for r in group if r.get("mia")]
        if mias:
            for attack in mias[0]:
                summary[key][f"mia_{attack}"] = mean_std([m[attack] for m in mias])
    return summary


def _pm(value: tuple[float, float] | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def markdown_table(results: dict, class_names: list[str]) -> str:
    """The paper's table (per method and forget class) and PBU's A_Dr gap to retraining, as markdown."""
    summary = summarise(results["records"])
    classes = sorted({key[1] for key in summary}, key=cell_sort_key)
    lines = [
        "| Method | Data needed | Forget class | A_Df (%) | A_Dr (%) | MIA SVC (%) | MIA LR (%) | Time (s) | Seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for forget_class in classes:
        before = results["original"][str(forget_class)]
        mia = before.get("mia") or {}
        lines.append(
            f"| original (before) | – | {cell_name(forget_class, class_names)} | "
            f"{before['forget_test_accuracy']:.1f} | {before['retain_test_accuracy']:.1f} | "
            f"{mia.get('entropy_svc', float('nan')):.1f} | {mia.get('loss_logistic', float('nan')):.1f} | – | – |"
        )
        for method in METHODS:
            row = summary.get((method, forget_class))
            if row is None:
                lines.append(f"| {method} | {METHODS[method].data_needed} | {forget_class} | not run | | | | | |")
                continue
            lines.append(
                f"| {method} | {row['data_needed']} | {cell_name(forget_class, class_names)} | "
                f"{_pm(row['forget_test_accuracy'])} | {_pm(row['retain_test_accuracy'])} | "
                f"{_pm(row.get('mia_entropy_svc'))} | {_pm(row.get('mia_loss_logistic'))} | "
                f"{_pm(row['seconds'], 0)} | {','.join(map(str, row['seeds']))} |"
            )
    lines += ["", "PBU against the retrain oracle, per cell (gap = PBU A_Dr − retrain A_Dr of the same seed, or of the "
              "mean over retrain seeds where that seed was not run):", "",
              "| Forget class | Seed | PBU A_Df train (%) | PBU A_Df test (%) | PBU A_Dr (%) | Retrain A_Dr (%) "
              "| A_Dr gap (points) |",
              "|---|---|---|---|---|---|---|"]
    retrain = {
        (r["forget_class"], r["seed"]): r["retain_test_accuracy"]
        for r in results["records"] if r["method"] == "retrain"
    }
    pbu_records = sorted(
        (r for r in results["records"] if r["method"] == "pbu"),
        key=lambda r: (cell_sort_key(r["forget_class"]), r["seed"]),
    )
    for record in pbu_records:
        forget_class, seed = record["forget_class"], record["seed"]
        oracle = retrain.get((forget_class, seed))
        if oracle is None and ("retrain", forget_class) in summary:
            oracle = summary[("retrain", forget_class)]["retain_test_accuracy"][0]
        gap = "n/a" if oracle is None else f"{record['retain_test_accuracy'] - oracle:+.1f}"
        lines.append(
            f"| {cell_name(forget_class, class_names)} | {seed} | {record['forget_train_accuracy']:.1f} | "
            f"{record['forget_test_accuracy']:.1f} | {record['retain_test_accuracy']:.1f} | "
            f"{'n/a' if oracle is None else f'{oracle:.1f}'} | {gap} |"
        )
    return "\n".join(lines)


def replace_section(document: str, section: str) -> str:
    """`document` with the SECTION_TITLE section (up to the next `## ` heading) replaced by `section`."""
    start = document.find(SECTION_TITLE)
    if start == -1:
        return document.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    end = document.find("\n## ", start + len(SECTION_TITLE))
    tail = "" if end == -1 else document[end:]
    return document[:start] + section.rstrip("\n") + "\n" + tail


def plot(results: dict, path: str, title: str) -> None:
    """A_Dr against A_Df, one marker per method and forget class (mean ± std over seeds)."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("The benchmark plot needs matplotlib: `pip install -e .[bench]`.") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(results["records"])
    markers = "o^sPDvX*"
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for index, method in enumerate(m for m in METHODS if any(key[0] == m for key in summary)):
        rows = [row for key, row in summary.items() if key[0] == method]
        axis.errorbar(
            [r["forget_test_accuracy"][0] for r in rows], [r["retain_test_accuracy"][0] for r in rows],
            xerr=[r["forget_test_accuracy"][1] for r in rows], yerr=[r["retain_test_accuracy"][1] for r in rows],
            fmt=markers[index % len(markers)], label=method, capsize=2, alpha=0.85,
        )
    axis.set_xlabel("A_Df: accuracy on the forgotten class, test (%)  — lower is better")
    axis.set_ylabel("A_Dr: accuracy on retained classes, test (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
