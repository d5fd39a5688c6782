"""The forget terms of issue 11 on the benchmark models: for one PBU setting per run (any `PBUConfig` flag, e.g.
`--forget_loss npo --learning_rate 1e-4`), every forget class and seed asked for, A_Df, A_Dr and its gap to the
retrain oracle, the MIA, steps and time; `--table` prints every setting measured so far, side by side.

    python benchmarks/forget_losses.py --dataset digits --forget_classes 0 1 2 3 4 5 6 7 8 9 0+6 --forget_loss npo
    python benchmarks/forget_losses.py --dataset digits --table --plot benchmarks/forget_losses_digits.png

The base model, the retrain oracle and the mask-logits reference come from `benchmarks/compare_methods.py` (run it
first with `--methods retrain mask_logits` on the same classes and seeds, into `--results_dir`). Records go to
`<results_dir>/forget_losses_<dataset>.json`, one per (setting, cell, seed); a rerun skips the cells already there. A
cell "0+6" forgets both classes at once. The gap is to the retrain oracle of the same seed, or to the mean of the
oracle's seeds measured for that cell where the same seed's retrain was not run.
The Fisher is cached (`--fisher_cache_dir`), so `seconds` is the unlearning alone.
"""

import copy
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import timm
import torch
from cells import cell_classes, cell_sort_key, cell_splits, parse_cell, pbu_setting, setting_label, suite_columns
from compare_methods import locked, write_atomically
from offline_data import DEFAULT_DIR, digits_dataset, fashion_mnist_dataset
from transformers import HfArgumentParser
from transformers.utils import logging

from hf_pbu import PBUConfig, PBUTrainer
from hf_pbu.evidence.measurement import measure
from hf_pbu.models import eval_transform

MODEL_DIRS = {"digits": "outputs/digits-resnet18", "fashion_mnist": "outputs/fashion-mnist-resnet18q-2ep"}
@dataclass
class StudyArguments:
    dataset: str = field(default="digits", metadata={"choices": list(MODEL_DIRS)})
    forget_classes: list[str] = field(
        default_factory=lambda: [str(c) for c in range(10)],
        metadata={"help": "One cell each: a class id, or ids joined by '+' to forget them at once."},
    )
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Seeds of the unlearning runs."})
    base_model_dir: str | None = field(default=None, metadata={"help": "Default: benchmarks/compare_methods.py's."})
    results_dir: str = field(default="benchmarks", metadata={"help": "Holds quality_<dataset>.json (the oracle)."})
    table: bool = field(default=False, metadata={"help": "Print the tables of every setting measured; run nothing."})
    plot: str | None = field(default=None, metadata={"help": "With --table: also plot the A_Dr gap per class."})
    table_seeds: list[int] | None = field(
        default=None, metadata={"help": "With --table: only these seeds' runs, to compare settings on the same seeds."}
    )
    eval_batch_size: int = field(default=256)


def load_json(path: str, empty: dict) -> dict:
    if not os.path.exists(path):
        return empty
    with open(path) as f:
        return json.load(f)


def run_cell(base: torch.nn.Module, splits: dict, config: PBUConfig, eval_batch_size: int,
             evidence_classes: list[int] | None = None) -> dict:
    """PBU with `config` on a copy of `base`, then A_Df, A_Dr, the MIA, steps and time."""
    trainer = PBUTrainer(model=copy.deepcopy(base), args=config, train_dataset=splits["forget_train"])
    trainer.prepare_penalty()  # the Fisher (cached) outside the timed part
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model = trainer.model.eval()
    record = {**dataclasses.asdict(measure(model, splits, eval_batch_size, seed=config.seed)), "seconds": seconds,
              "steps": trainer.state.global_step, "stopped_at_step": trainer.stop_state.stopped_at_step}
    if evidence_classes:
        record["evidence"] = suite_columns(model, splits, evidence_classes, config.seed)
    return record


def oracle(results_dir: str, dataset: str) -> dict[tuple[str, int, int], dict]:
    """benchmarks/compare_methods.py's retrain and mask_logits records, by (method, class, seed)."""
    quality = load_json(os.path.join(results_dir, f"quality_{dataset}.json"), {"records": []})
    return {(r["method"], r["forget_class"], r["seed"]): r for r in quality["records"]
            if r["method"] in ("retrain", "mask_logits")}


def measure_setting(args: StudyArguments, config: PBUConfig, path: str) -> None:
    data = digits_dataset() if args.dataset == "digits" else fashion_mnist_dataset(DEFAULT_DIR)
    base = timm.create_model(f"local-dir:{args.base_model_dir or MODEL_DIRS[args.dataset]}", pretrained=True).eval()
    transform = eval_transform(base)
    setting = pbu_setting(config)
    for forget_class in map(parse_cell, args.forget_classes):
        splits = cell_splits(data, transform, forget_class, mia_members=2000)
        for seed in args.seeds:
            records = load_json(path, {"records": []})["records"]
            if any((r["setting"], r["forget_class"], r["seed"]) == (setting, forget_class, seed) for r in records):
                continue
            cell_config = dataclasses.replace(config, seed=seed, save_strategy="no", logging_strategy="no",
                                              disable_tqdm=True, report_to="none")
            record = run_cell(base, splits, cell_config, args.eval_batch_size,
                              cell_classes(forget_class) if config.evidence else None)
            record.update(setting=setting, forget_class=forget_class, seed=seed)
            with locked(path):  # another run (setting, seed or dataset) may update the same file at once
                results = load_json(path, {"records": [], "commands": []})
                results["records"].append(record)
                command = "python benchmarks/forget_losses.py " + " ".join(sys.argv[1:])
                results["commands"] = [c for c in results["commands"] if c != command] + [command]
                write_atomically(path, json.dumps(results, indent=1))
            print(f"{setting_label(setting)} class {forget_class} seed {seed}: "
                  f"A_Df {record['forget_test_accuracy']:.1f} A_Dr {record['retain_test_accuracy']:.1f} "
                  f"steps {record['steps']} ({record['seconds']:.0f} s)", flush=True)


def oracle_retain_accuracy(oracles: dict, cell, seed: int) -> float | None:
    """The retrain oracle's A_Dr for (cell, seed): that seed's run, else the mean over the cell's retrain seeds."""
    same_seed = oracles.get(("retrain", cell, seed))
    if same_seed is not None:
        return same_seed["retain_test_accuracy"]
    others = [r["retain_test_accuracy"] for (method, c, _), r in oracles.items() if method == "retrain" and c == cell]
    return float(np.mean(others)) if others else None


def gaps_by_setting(records: list[dict], oracles: dict) -> dict[str, dict[int | str, list[tuple[float, dict]]]]:
    """label -> cell -> [(A_Dr gap to the retrain oracle, record)]; cells without an oracle left out."""
    table: dict[str, dict[int | str, list]] = {}
    for r in records:
        retrain = oracle_retain_accuracy(oracles, r["forget_class"], r["seed"])
        if retrain is not None:
            cells = table.setdefault(setting_label(r["setting"]), {}).setdefault(r["forget_class"], [])
            cells.append((r["retain_test_accuracy"] - retrain, r))
    return table


def gap_cell(cells: list[tuple[float, dict]]) -> str:
    """Mean gap over seeds, with the mean A_Df (test) in brackets where it is above 1%."""
    if not cells:
        return ""
    a_df = np.mean([r["forget_test_accuracy"] for _, r in cells])
    seeds = f" /{len(cells)}" if len(cells) > 1 else ""
    return f"{np.mean([g for g, _ in cells]):+.1f}{seeds}" + (f" ({a_df:.0f})" if a_df > 1 else "")


def print_tables(args: StudyArguments, path: str) -> None:
    results = load_json(path, {"records": [], "commands": []})
    oracles = oracle(args.results_dir, args.dataset)
    records = [r for r in results["records"] if args.table_seeds is None or r["seed"] in args.table_seeds]
    table = gaps_by_setting(records, oracles)
    classes = sorted({c for by_class in table.values() for c in by_class}, key=cell_sort_key)
    masked = [oracles[("mask_logits", c, 0)]["retain_test_accuracy"]
              - oracles[("retrain", c, 0)]["retain_test_accuracy"]
              for c in classes if ("mask_logits", c, 0) in oracles and ("retrain", c, 0) in oracles]
    retrain_mia = [r["mia"]["loss_logistic"] for (method, c, _), r in oracles.items() if method == "retrain"
                   and c in classes]
    print("| setting | cells | mean A_Df (%) | max A_Df (%) | mean A_Dr gap | worst gap | cells < −1 | "
          "MIA LR (%) | steps | time (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| retrain (oracle) | {len(classes)} | 0.0 | 0.0 | 0 | 0 | 0 | {np.mean(retrain_mia):.1f} | | |")
    if len(masked) == len(classes):
        print(f"| mask_logits (reference) | {len(classes)} | 0.0 | 0.0 | {np.mean(masked):+.2f} | {min(masked):+.1f} "
              f"| {sum(g < -1 for g in masked)} | | 0 | |")
    for label, by_class in table.items():
        cells = [cell for c in classes for cell in by_class.get(c, [])]
        gaps, records = [g for g, _ in cells], [r for _, r in cells]
        mia = [r["mia"]["loss_logistic"] for r in records if r.get("mia")]
        print(f"| {label} | {len(by_class)} | {np.mean([r['forget_test_accuracy'] for r in records]):.1f} | "
              f"{max(r['forget_test_accuracy'] for r in records):.1f} | {np.mean(gaps):+.2f} | {min(gaps):+.1f} | "
              f"{sum(g < -1 for g in gaps)} | {np.mean(mia) if mia else float('nan'):.1f} | "
              f"{np.mean([r['steps'] for r in records]):.0f} | {np.mean([r['seconds'] for r in records]):.0f} |")
    print("\nA_Dr gap to retrain (points) per forget class (mean over seeds, their number after a slash where more "
          "than one; A_Df test in brackets where above 1%):\n")
    print("| setting | " + " | ".join(map(str, classes)) + " |")
    print("|---|" + "---|" * len(classes))
    for label, by_class in table.items():
        print(f"| {label} | " + " | ".join(gap_cell(by_class.get(c, [])) for c in classes) + " |")
    print("\nProduced by:\n\n" + "\n".join(f"    {c}" for c in results["commands"]))
    if args.plot:
        plot_gaps(table, classes, args.plot, args.dataset)


def plot_gaps(table: dict, classes: list[int], path: str, dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label, by_class in table.items():
        present = [i for i, c in enumerate(classes) if c in by_class]
        axis.plot(present, [np.mean([g for g, _ in by_class[classes[i]]]) for i in present], marker="o", label=label)
    axis.axhline(-1, color="grey", linestyle="--", linewidth=1)
    axis.set_xticks(range(len(classes)), [str(c) for c in classes])
    axis.set_xlabel("forget class")
    axis.set_ylabel("A_Dr − retrain A_Dr (points)")
    axis.set_title(f"{dataset}: A_Dr gap to the retrain oracle per forget class")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    logging.set_verbosity_error()
    parser = HfArgumentParser((StudyArguments, PBUConfig))
    argv = sys.argv[1:] + ([] if "--output_dir" in sys.argv else ["--output_dir", "outputs/forget_losses"])
    args, config = parser.parse_args_into_dataclasses(args=argv)
    path = os.path.join(args.results_dir, f"forget_losses_{args.dataset}.json")
    os.makedirs(args.results_dir, exist_ok=True)
    if args.table:
        print_tables(args, path)
        return
    measure_setting(args, config, path)


if __name__ == "__main__":
    main()
