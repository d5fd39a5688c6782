"""Issue 20: is the class gone from the model, or only from its outputs? Every forget class of a benchmark model,
for the retrain oracle, the logit-masked original and any PBU setting: A_Df, the A_Dr gap to the oracle, the three
attacks (`hf_pbu.evidence`: fine-tune relearn k=10, head-only relearn k=10, prototype) and the time against retraining.

    python benchmarks/feature_forgetting.py --dataset fashion_mnist --base_label_smoothing 0 --references
    python benchmarks/feature_forgetting.py --dataset fashion_mnist --base_label_smoothing 0 --forget_loss neg_ce
    python benchmarks/feature_forgetting.py --dataset fashion_mnist --base_label_smoothing 0 --table --plot P.png

`--references` measures the original model, the zero-cost references (mask_logits; row_reset, the class's head row
and bias replaced by the retained rows' mean) and the retrain oracle of every cell (the
oracle is trained once and cached under outputs/oracles/, with the seconds its training took); any other run measures
one PBU setting (every `PBUConfig` flag) on every cell and seed. Records go to
`<results_dir>/feature_forgetting_<dataset>_<recipe>.json`; a rerun skips what is there. PBU's seconds include its
Fisher (no cache); the oracle's are those of its first training, on a machine shared with other jobs (the cost against
retraining is measured side by side by `benchmarks/unlearning_cost.py`). "closed" is the share of the distance from the
original to the oracle that a method closes under an attack, (original - method) / (original - oracle), per cell.
"""

import copy
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field

import torch
from baselines import METHODS
from cells import cell_classes, cell_splits, parse_cell, pbu_setting, suite_columns
from compare_methods import BenchmarkArguments, base_model_dir, load_base, locked, write_atomically
from feature_forgetting_table import print_table
from oracles import cached_oracle
from transformers import HfArgumentParser
from transformers.utils import logging

from hf_pbu import PBUConfig, PBUTrainer
from hf_pbu.evidence.attacks import reset_forget_head
from hf_pbu.evidence.measurement import measure
from hf_pbu.models import eval_transform, head_linear


@dataclass
class FeatureArguments:
    dataset: str = field(default="fashion_mnist", metadata={"choices": ["digits", "fashion_mnist"]})
    base_label_smoothing: float = field(default=0.1, metadata={"help": "The base model's recipe (0: plain CE)."})
    forget_classes: list[str] = field(default_factory=lambda: [str(c) for c in range(10)])
    seeds: list[int] = field(default_factory=lambda: [0])
    references: bool = field(default=False, metadata={"help": "Measure the original, mask_logits and the oracle."})
    oracles_only: bool = field(default=False, metadata={"help": "Only train (and cache) the oracles."})
    baseline: str | None = field(default=None, metadata={"help": "Measure this forget-only baseline of "
                                 "benchmarks/baselines (e.g. spotter, with its own defaults) instead of PBU."})
    results_dir: str = field(default="benchmarks/feature_forgetting")
    table: bool = field(default=False, metadata={"help": "Print the table of everything measured; run nothing."})
    plot: str | None = field(default=None, metadata={"help": "With --table: the attacks' plot."})
    eval_batch_size: int = field(default=256)


def recipe_name(smoothing: float) -> str:
    return "ls" if smoothing else "plain_ce"


def load_json(path: str) -> dict:
    if not os.path.exists(path):
        return {"records": [], "commands": []}
    with open(path) as f:
        return json.load(f)


def save_record(path: str, record: dict) -> None:
    with locked(path):
        results = load_json(path)
        results["records"].append(record)
        command = "python benchmarks/feature_forgetting.py " + " ".join(sys.argv[1:])
        results["commands"] = [c for c in results["commands"] if c != command] + [command]
        write_atomically(path, json.dumps(results, indent=1))


def measured(model: torch.nn.Module, splits: dict, classes: list[int], seed: int, batch_size: int) -> dict:
    return {**dataclasses.asdict(measure(model, splits, batch_size, seed=seed)),
            "attacks": suite_columns(model, splits, classes, seed)}


def run_pbu(base: torch.nn.Module, splits: dict, config: PBUConfig) -> tuple[torch.nn.Module, dict]:
    trainer = PBUTrainer(model=copy.deepcopy(base), args=config, train_dataset=splits["forget_train"])
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return trainer.model.eval(), {"seconds": seconds, "fisher_seconds": trainer.fisher_record.seconds,
                                  "steps": trainer.state.global_step,
                                  "stopped_at_step": trainer.stop_state.stopped_at_step}


def run(args: FeatureArguments, config: PBUConfig, path: str) -> None:
    bench = BenchmarkArguments(dataset=args.dataset, base_label_smoothing=args.base_label_smoothing)
    data, base, recipe, _ = load_base(bench)
    base_dir = base_model_dir(bench)
    transform = eval_transform(base)
    setting = pbu_setting(config)
    for cell in map(parse_cell, args.forget_classes):
        classes = cell_classes(cell)
        splits = cell_splits(data, transform, cell, mia_members=2000)
        if args.oracles_only or args.references:
            oracle, retrain_seconds = cached_oracle(base, base_dir, splits["retain_train_all"], cell, 0, recipe)
        if args.oracles_only:
            print(f"oracle of {cell}: {retrain_seconds:.0f} s", flush=True)
            continue
        done = load_json(path)["records"]
        if args.references:
            masked = METHODS["mask_logits"].unlearn(copy.deepcopy(base), splits["forget_train"], None,
                                                    METHODS["mask_logits"].config_class())
            row_reset = copy.deepcopy(base)  # zero cost: the class's row and bias replaced by the retained mean
            reset_forget_head(head_linear(row_reset), classes, "row")
            for name, model, seconds in (("original", base, 0.0), ("oracle", oracle, retrain_seconds),
                                         ("mask_logits", masked, 0.0), ("row_reset", row_reset, 0.0)):
                if any((r["model"], r["cell"]) == (name, cell) for r in done):
                    continue
                record = {"model": name, "cell": cell, "seed": 0, "seconds": seconds,
                          **measured(model, splits, classes, 0, args.eval_batch_size)}
                save_record(path, record)
                print(f"{name} {cell}: {json.dumps(record['attacks'])}", flush=True)
            continue
        if args.baseline is not None:
            method = METHODS[args.baseline]
            if method.needs_retain:
                raise ValueError(f"{args.baseline} needs retained data: this benchmark compares forget-only methods.")
            for seed in args.seeds:
                if any((r["model"], r["cell"], r["seed"]) == (args.baseline, cell, seed) for r in done):
                    continue
                start = time.perf_counter()
                method_config = method.config_class(seed=seed)
                model = method.unlearn(copy.deepcopy(base), splits["forget_train"], None, method_config)
                record = {"model": args.baseline, "cell": cell, "seed": seed, "seconds": time.perf_counter() - start,
                          **measured(model.eval(), splits, classes, seed, args.eval_batch_size)}
                save_record(path, record)
                print(f"{args.baseline} {cell} seed {seed}: A_Df {record['forget_test_accuracy']:.1f} "
                      f"A_Dr {record['retain_test_accuracy']:.1f} {json.dumps(record['attacks'])}", flush=True)
            continue
        for seed in args.seeds:
            if any((r["model"], r.get("setting"), r["cell"], r["seed"]) == ("pbu", setting, cell, seed)
                   for r in done):
                continue
            cell_config = dataclasses.replace(config, seed=seed, save_strategy="no", logging_strategy="no",
                                              disable_tqdm=True, report_to="none", fisher_cache_dir="none")
            model, run_info = run_pbu(base, splits, cell_config)
            record = {"model": "pbu", "setting": setting, "cell": cell, "seed": seed, **run_info,
                      **measured(model, splits, classes, seed, args.eval_batch_size)}
            save_record(path, record)
            print(f"{setting['forget_loss']} {cell} seed {seed}: A_Df {record['forget_test_accuracy']:.1f} "
                  f"A_Dr {record['retain_test_accuracy']:.1f} {json.dumps(record['attacks'])} "
                  f"({record['seconds']:.0f} s, {record['steps']} steps)", flush=True)


def main() -> None:
    logging.set_verbosity_error()
    parser = HfArgumentParser((FeatureArguments, PBUConfig))
    argv = sys.argv[1:] + ([] if "--output_dir" in sys.argv else ["--output_dir", "outputs/feature_forgetting"])
    args, config = parser.parse_args_into_dataclasses(args=argv)
    os.makedirs(args.results_dir, exist_ok=True)
    name = f"{args.dataset}_{recipe_name(args.base_label_smoothing)}"
    path = os.path.join(args.results_dir, f"feature_forgetting_{name}.json")
    if args.table:
        print_table(load_json(path), args.plot, f"{args.dataset}, {recipe_name(args.base_label_smoothing)}")
        return
    run(args, config, path)


if __name__ == "__main__":
    main()
