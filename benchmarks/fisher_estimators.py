"""Which Fisher estimator for many classes (issue 10, item 5), judged by the *unlearned model*: PBU with each
estimator setting on every forget class of a benchmark model, A_Df / A_Dr after unlearning against the exact Fisher,
with the cost of each Fisher in backward directions per image.

    python benchmarks/fisher_estimators.py --dataset digits --forget_classes 0 1 2 3 4 5 6 7 8 9

The exact Fisher costs C-1 directions per forget image (|S_n| (C-1) in all: on a balanced dataset about one epoch over
the whole training set); `fisher_top_mass` keeps each image's most likely classes covering that mass, `mc` draws
labels. A setting is good enough when the unlearned model is as good as with the exact Fisher; its cost then decides.
"""

import copy
import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import timm
import torch
from base_models import train_digits_model, train_fashion_mnist_model
from cells import cell_splits
from offline_data import DEFAULT_DIR, digits_dataset, fashion_mnist_dataset
from transformers import HfArgumentParser
from transformers.utils import logging

from hf_pbu import PBUConfig, PBUTrainer
from hf_pbu.evidence.measurement import measure, predictions
from hf_pbu.models import eval_transform
from hf_pbu.objective.fisher import score_directions

# (label, PBUConfig overrides) of each estimator setting compared.
SETTINGS = {
    "exact": {},
    "top_mass 0.99": {"fisher_top_mass": 0.99},
    "top_mass 0.9": {"fisher_top_mass": 0.9},
    "mc 1": {"fisher_estimator": "mc", "fisher_mc_samples": 1},
    "empirical": {"fisher_estimator": "empirical"},
    "no Fisher (beta 0)": {"beta": 0.0},
}


@dataclass
class EstimatorArguments:
    dataset: str = field(default="digits", metadata={"choices": ["digits", "fashion_mnist"]})
    forget_classes: list[int] = field(default_factory=lambda: list(range(10)), metadata={"help": "One cell each."})
    settings: list[str] = field(default_factory=lambda: list(SETTINGS), metadata={"help": f"Among {list(SETTINGS)}."})


def base(dataset: str):
    if dataset == "digits":
        return digits_dataset(), train_digits_model("outputs/digits-resnet18")
    data = fashion_mnist_dataset(DEFAULT_DIR)
    return data, train_fashion_mnist_model("outputs/fashion-mnist-resnet18q-2ep", data, epochs=2)


def directions_per_image(model: torch.nn.Module, forget_train, config: PBUConfig) -> float:
    """Mean number of nonzero backward directions per forget image that the setting's Fisher runs (none at beta 0:
    the trainer does not compute a Fisher that weighs nothing)."""
    if config.beta == 0:
        return 0.0
    logits, labels = predictions(model, forget_train, 256)
    estimator = config.fisher_estimator_for(logits.shape[-1])
    directions = score_directions(logits, labels, estimator, config.fisher_mc_samples,
                                  torch.Generator().manual_seed(0), config.fisher_top_mass)
    return float((directions.abs().sum(-1) > 0).sum(1).float().mean())


def main() -> None:
    logging.set_verbosity_error()
    torch.set_num_threads(1)
    args, config = HfArgumentParser((EstimatorArguments, PBUConfig)).parse_args_into_dataclasses(
        args=[*sys.argv[1:], "--output_dir", tempfile.mkdtemp(), "--save_strategy", "no",
              "--report_to", "none", "--logging_strategy", "no", "--disable_tqdm", "true", "--fisher_cache_dir",
              "none"]
    )
    data, model_dir = base(args.dataset)
    model = timm.create_model(f"local-dir:{model_dir}", pretrained=True).eval()
    rows = {name: [] for name in args.settings}
    for forget_class in args.forget_classes:
        splits = cell_splits(data, eval_transform(model), forget_class, mia_members=0)
        for name in args.settings:
            setting = dataclasses.replace(config, **SETTINGS[name])
            unlearned = copy.deepcopy(model)
            trainer = PBUTrainer(model=unlearned, args=setting, train_dataset=splits["forget_train"])
            start = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - start
            after = measure(unlearned.eval(), splits, 256)
            record = (after.forget_test_accuracy, after.retain_test_accuracy, trainer.fisher_record.seconds, seconds,
                      directions_per_image(model, splits["forget_train"], setting))
            rows[name].append(record)
            print(f"class {forget_class} {name:14} A_Df {record[0]:5.1f} A_Dr {record[1]:5.1f} "
                  f"Fisher {record[2]:5.1f} s, {record[4]:.1f} directions/image", flush=True)
    exact = np.array(rows["exact"]) if "exact" in rows else None
    print("\n| Fisher | directions / image | Fisher (s) | A_Df % (mean, max) | A_Dr % (mean, min) | "
          "A_Dr vs exact (mean, worst) |\n|---|---:|---:|---|---|---|")
    for name, records in rows.items():
        values = np.array(records)
        diff = None if exact is None else values[:, 1] - exact[:, 1]
        gap = "" if diff is None else f"{diff.mean():+.2f}, {diff.min():+.2f}"
        print(f"| {name} | {values[:, 4].mean():.1f} | {values[:, 2].mean():.1f} | {values[:, 0].mean():.2f}, "
              f"{values[:, 0].max():.2f} | {values[:, 1].mean():.2f}, {values[:, 1].min():.2f} | {gap} |")


if __name__ == "__main__":
    main()
