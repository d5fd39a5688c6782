"""What unlearning costs against retraining, measured side by side in one process: for each forget class, the retrain
oracle (the base model's own recipe on the retained data, trained afresh) and PBU at each forget level asked for (its
Fisher computed, no cache), wall seconds on the same machine in the same run.

    python benchmarks/unlearning_cost.py --dataset fashion_mnist --base_label_smoothing 0 --forget_classes 0 6
    python benchmarks/unlearning_cost.py --dataset digits --forget_levels head output

Records go to `<results_dir>/unlearning_cost_<dataset>_<recipe>.json`, with the command; the table is printed.
"""

import copy
import json
import os
import sys
import time
from dataclasses import dataclass, field

import torch
from baselines import METHODS
from cells import cell_splits, parse_cell
from compare_methods import BenchmarkArguments, load_base, locked, write_atomically
from feature_forgetting import recipe_name
from transformers import HfArgumentParser
from transformers.utils import logging

from hf_pbu import PBUConfig, PBUTrainer
from hf_pbu.models import eval_transform


@dataclass
class CostArguments:
    dataset: str = field(default="fashion_mnist", metadata={"choices": ["digits", "fashion_mnist"]})
    base_label_smoothing: float = field(default=0.1, metadata={"help": "The base model's recipe (0: plain CE)."})
    forget_classes: list[str] = field(default_factory=lambda: ["0"])
    forget_levels: list[str] = field(default_factory=lambda: ["head", "output"])
    results_dir: str = field(default="benchmarks/feature_forgetting")


def main() -> None:
    logging.set_verbosity_error()
    parser = HfArgumentParser((CostArguments, PBUConfig))
    argv = sys.argv[1:] + ([] if "--output_dir" in sys.argv else ["--output_dir", "outputs/unlearning_cost"])
    args, config = parser.parse_args_into_dataclasses(args=argv)
    bench = BenchmarkArguments(dataset=args.dataset, base_label_smoothing=args.base_label_smoothing)
    data, base, recipe, _ = load_base(bench)
    transform = eval_transform(base)
    name = f"{args.dataset}_{recipe_name(args.base_label_smoothing)}"
    path = os.path.join(args.results_dir, f"unlearning_cost_{name}.json")
    os.makedirs(args.results_dir, exist_ok=True)
    print("| forget class | retrain (s) | " + " | ".join(f"PBU {level} (s, steps, / retrain)" for level in
                                                        args.forget_levels) + " |")
    print("|---|---|" + "---|" * len(args.forget_levels))
    for cell in map(parse_cell, args.forget_classes):
        splits = cell_splits(data, transform, cell, mia_members=0)
        retrain = METHODS["retrain"]
        start = time.perf_counter()
        retrain.unlearn(base, None, splits["retain_train_all"], retrain.config_class(training_args=recipe(0), seed=0))
        retrain_seconds = time.perf_counter() - start
        record = {"cell": cell, "retrain_seconds": retrain_seconds, "threads": torch.get_num_threads(), "pbu": {}}
        for level in args.forget_levels:
            level_config = PBUConfig(**{**config.to_dict(), "forget_level": level, "fisher_cache_dir": "none",
                                        "save_strategy": "no", "logging_strategy": "no", "disable_tqdm": True,
                                        "report_to": "none"})
            trainer = PBUTrainer(model=copy.deepcopy(base), args=level_config, train_dataset=splits["forget_train"])
            start = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - start
            record["pbu"][level] = {"seconds": seconds, "fisher_seconds": trainer.fisher_record.seconds,
                                    "steps": trainer.state.global_step}
        with locked(path):
            results = {"records": [], "commands": []}
            if os.path.exists(path):
                with open(path) as f:
                    results = json.load(f)
            results["records"].append(record)
            command = "python benchmarks/unlearning_cost.py " + " ".join(sys.argv[1:])
            results["commands"] = [c for c in results["commands"] if c != command] + [command]
            write_atomically(path, json.dumps(results, indent=1))
        cells = [f"{p['seconds']:.0f}, {p['steps']}, {p['seconds'] / retrain_seconds:.2f}"
                 for p in record["pbu"].values()]
        print(f"| {cell} | {retrain_seconds:.0f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
