"""The table and plot of `feature_forgetting.py`: each method against the retrain oracle, over every cell measured.

For each attack, the forget-test accuracy after it (mean over cells), the share of the original-to-oracle distance the
method closes ((original - method) / (original - oracle), per cell, over the cells where the oracle is at least
`MIN_DISTANCE` points below the original), and how many cells are within the oracle + 10 points.
"""

import math
from collections import defaultdict

import numpy as np
from cells import setting_label

from hf_pbu.evidence import ATTACKS, SUITE

REFERENCES = ("oracle", "mask_logits", "row_reset", "original")  # measured once per cell, with no seed
# Below this distance (points) between the original and the oracle, the share closed is not defined for a cell.
MIN_DISTANCE = 5.0
TOLERANCE = 10.0  # "within the oracle ± 10 points"


def attacks_measured(results: dict) -> list[str]:
    """The suite's attacks (`hf_pbu.evidence.SUITE`, in its order) that every record of `results` holds."""
    return [attack.name for attack in SUITE if all(attack.name in r["attacks"] for r in results["records"])]


def _rows(results: dict) -> tuple[dict, dict]:
    """(references by (model, cell): the original, the oracle and mask_logits; methods by label and cell: every PBU
    setting and every other baseline, each record of its cells and seeds)."""
    references, methods = {}, defaultdict(lambda: defaultdict(list))
    for record in results["records"]:
        if record["model"] == "pbu":
            methods["PBU " + setting_label(record["setting"])][record["cell"]].append(record)
        elif record["model"] in REFERENCES:
            references[(record["model"], record["cell"])] = record
        else:
            methods[record["model"]][record["cell"]].append(record)
    return references, methods


def _summary(records_by_cell: dict, references: dict, attacks: list[str]) -> dict | None:
    cells = [c for c in records_by_cell if ("oracle", c) in references and ("original", c) in references]
    if not cells:
        return None
    row = {"cells": len(cells), "seeds": max(len(records_by_cell[c]) for c in cells)}

    def mean(key, c):
        return float(np.mean([r[key] for r in records_by_cell[c]]))

    def attack(name, c):
        return float(np.mean([r["attacks"][name] for r in records_by_cell[c]]))

    gaps = [mean("retain_test_accuracy", c) - references[("oracle", c)]["retain_test_accuracy"] for c in cells]
    row.update(a_df=np.mean([mean("forget_test_accuracy", c) for c in cells]),
               a_df_max=max(mean("forget_test_accuracy", c) for c in cells),
               gap=np.mean(gaps), worst_gap=min(gaps), below_3=sum(g < -3 for g in gaps))
    for name in attacks:
        values = [attack(name, c) for c in cells]
        oracle = [references[("oracle", c)]["attacks"][name] for c in cells]
        original = [references[("original", c)]["attacks"][name] for c in cells]
        shares = [(o - v) / (o - r) for v, r, o in zip(values, oracle, original) if o - r >= MIN_DISTANCE]
        row[name] = np.mean(values)
        row[f"{name}_closed"] = 100 * np.mean(shares) if shares else float("nan")
        row[f"{name}_distance"] = np.mean([abs(v - r) for v, r in zip(values, oracle)])
        row[f"{name}_within"] = sum(abs(v - r) <= TOLERANCE for v, r in zip(values, oracle))
    if all("seed" in records_by_cell[c][0] and records_by_cell[c][0]["model"] not in REFERENCES for c in cells):
        seconds = [mean("seconds", c) for c in cells]
        retrain = [references[("oracle", c)]["seconds"] for c in cells]
        row["seconds"] = np.mean(seconds)
        row["time_ratio"] = np.mean([s / r for s, r in zip(seconds, retrain)])
        if all("steps" in records_by_cell[c][0] for c in cells):  # a PBU setting
            row["steps"] = np.mean([mean("steps", c) for c in cells])
    return row


def summaries(results: dict, attacks: list[str]) -> dict[str, dict]:
    """label -> summary row, for the references (as one-record methods) and every PBU setting."""
    references, methods = _rows(results)
    rows = {}
    for name in REFERENCES:
        by_cell = {c: [r] for (model, c), r in references.items() if model == name}
        summary = _summary(by_cell, references, attacks)
        if summary:
            rows[name] = summary
    for label, by_cell in methods.items():
        summary = _summary(by_cell, references, attacks)
        if summary:
            rows[label] = summary
    return rows


def print_table(results: dict, plot_path: str | None, title: str) -> None:
    attacks = attacks_measured(results)
    rows = summaries(results, attacks)
    header = ["method", "cells", "seeds", "mean A_Df", "max A_Df", "A_Dr gap", "worst gap", "< −3"]
    header += [f"{name} (closed %, mean abs(model − oracle), within ±10)" for name in attacks]
    header += ["steps", "time (s)", "time / retrain"]
    print(f"### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, row in rows.items():
        cells = [label, str(row["cells"]), str(row["seeds"]), f"{row['a_df']:.1f}", f"{row['a_df_max']:.1f}",
                 f"{row['gap']:+.2f}", f"{row['worst_gap']:+.1f}", str(row["below_3"])]
        for name in attacks:
            closed = row[f"{name}_closed"]
            cells.append(f"{row[name]:.1f} ({'n/a' if np.isnan(closed) else f'{closed:.0f}'}, "
                         f"{row[f'{name}_distance']:.1f}, {row[f'{name}_within']}/{row['cells']})")
        if "seconds" in row:
            steps = f"{row['steps']:.0f}" if "steps" in row else ""
            cells += [steps, f"{row['seconds']:.0f}", f"{row['time_ratio']:.2f}"]
        else:
            cells += ["", "", ""]
        print("| " + " | ".join(cells) + " |")
    print("\nProduced by:\n\n" + "\n".join(f"    {c}" for c in results["commands"]))
    print("\nAttacks: " + "; ".join(f"{name}: {ATTACKS[name].label}" for name in attacks) + ".")
    if plot_path:
        plot(rows, attacks, plot_path, title)


def plot(rows: dict[str, dict], attacks: list[str], path: str, title: str) -> None:
    """One panel per attack (forget-test accuracy after it, mean over cells) and one of the A_Dr gap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(rows)
    columns = math.ceil((len(attacks) + 1) / 2)  # two rows of panels: the attacks, then the A_Dr gap
    figure, grid = plt.subplots(2, columns, figsize=(3.6 * columns + 2.5, 2 * (0.3 * len(labels) + 1.4)),
                                sharey=True, squeeze=False)
    axes = list(grid.flat)
    y = np.arange(len(labels))
    for axis, name in zip(axes, attacks):
        axis.barh(y, [rows[label][name] for label in labels], color="#1f4e96")
        axis.axvline(rows["oracle"][name], color="#2ca02c", linestyle="--", label="oracle")
        for side in (-TOLERANCE, TOLERANCE):
            axis.axvline(rows["oracle"][name] + side, color="#2ca02c", linestyle=":",
                         label="oracle ± 10" if side > 0 else None)
        axis.set_title(f"{name}: A_Df after (%)", fontsize=8)
        axis.set_xlim(0, 100)
    axes[0].legend(fontsize=6, loc="lower right")
    gap = axes[len(attacks)]
    gap.barh(y, [rows[label]["gap"] for label in labels], color="#d62728")
    gap.axvline(-1, color="grey", linestyle="--")
    gap.set_title("A_Dr − oracle A_Dr (points)", fontsize=8)
    for axis in axes[len(attacks) + 1:]:
        axis.set_visible(False)
    for axis in grid[:, 0]:
        axis.set_yticks(y, labels, fontsize=6)
    grid[0, 0].invert_yaxis()
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
