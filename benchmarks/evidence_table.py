"""Is the class really gone? The evidence columns of issue 13 (a binary probe and the relearn attack per k; records
written since by the attack suite are left to `feature_forgetting_table.py`) of every method and PBU forget loss, per
cell, read against the retrain oracle and the mask-logits reference:

    python benchmarks/compare_methods.py --dataset digits --evidence --methods retrain mask_logits finetune unsir \
        bad_teaching ssd scrub --forget_classes 2 6 8 --seeds 0 --results_dir benchmarks/evidence
    python benchmarks/forget_losses.py --dataset digits --evidence --forget_classes 2 6 8 --results_dir \
        benchmarks/evidence --forget_loss neg_ce          (and each forget loss)
    python benchmarks/evidence_table.py --dataset digits --results_dir benchmarks/evidence

Columns: A_Df and A_Dr (test, %); the linear probe's balanced accuracy (%, chance 50) at telling forget-class
images from retained ones on the penultimate features; A_Df after the relearn attack with k images per class
(`hf_pbu.evidence.relearn_attack`: the forget head bias reset to the average, then 100 Adam steps at 1e-4); the
evidence's own seconds against the method's.
"""

import json
import os
from dataclasses import dataclass, field

import numpy as np
from cells import cell_sort_key
from forget_losses import setting_label
from transformers import HfArgumentParser


@dataclass
class TableArguments:
    dataset: str = field(default="digits", metadata={"choices": ["digits", "fashion_mnist"]})
    results_dir: str = field(default="benchmarks/evidence")


def load(path: str) -> dict:
    if not os.path.exists(path):
        return {"records": [], "original": {}}
    with open(path) as f:
        return json.load(f)


def rows(args: TableArguments) -> dict:
    """cell -> [(label, record with "evidence")], the original model first."""
    quality = load(os.path.join(args.results_dir, f"quality_{args.dataset}.json"))
    losses = load(os.path.join(args.results_dir, f"forget_losses_{args.dataset}.json"))
    table: dict = {}
    for cell, original in quality["original"].items():
        if "probe_balanced_accuracy" in original.get("evidence", {}):
            table.setdefault(int(cell) if cell.isdigit() else cell, []).append(("original (before)", original))
    for record in quality["records"]:
        if "probe_balanced_accuracy" in record.get("evidence", {}):
            table.setdefault(record["forget_class"], []).append((record["method"], record))
    for record in losses["records"]:
        if "probe_balanced_accuracy" in record.get("evidence", {}):
            label = "PBU " + setting_label(record["setting"])
            table.setdefault(record["forget_class"], []).append((label, record))
    return table


def main() -> None:
    (args,) = HfArgumentParser(TableArguments).parse_args_into_dataclasses()
    table = rows(args)
    ks = sorted({key.split("_")[1] for cells in table.values() for _, r in cells for key in r["evidence"]
                 if key.startswith("relearn_") and key.count("_") == 1}, key=int)
    print("| forget class | model | A_Df | A_Dr | probe (%) | " + " | ".join(f"relearn k={k}" for k in ks)
          + " | evidence (s) | method (s) |")
    print("|---|---|---|---|---|" + "---|" * len(ks) + "---|---|")
    for cell in sorted(table, key=cell_sort_key):
        for label, record in table[cell]:
            evidence = record["evidence"]
            relearn = " | ".join(f"{evidence[f'relearn_{k}']:.1f}" for k in ks)
            method_seconds = f"{record['seconds']:.0f}" if "seconds" in record else ""
            print(f"| {cell} | {label} | {record['forget_test_accuracy']:.1f} | {record['retain_test_accuracy']:.1f} "
                  f"| {evidence['probe_balanced_accuracy']:.1f} | {relearn} | {evidence['seconds']:.0f} | "
                  f"{method_seconds} |")
    by_model: dict = {}
    for cells in table.values():
        for label, record in cells:
            by_model.setdefault(label, []).append(record["evidence"])
    print("\nMean over cells:\n")
    print("| model | cells | probe (%) | " + " | ".join(f"relearn k={k}" for k in ks) + " |")
    print("|---|---|---|" + "---|" * len(ks))
    for label, found in by_model.items():
        relearn = " | ".join(f"{np.mean([e[f'relearn_{k}'] for e in found]):.1f}" for k in ks)
        print(f"| {label} | {len(found)} | {np.mean([e['probe_balanced_accuracy'] for e in found]):.1f} | {relearn} |")


if __name__ == "__main__":
    main()
