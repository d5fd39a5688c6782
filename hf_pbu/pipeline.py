"""One unlearning run: measure, unlearn with `PBUTrainer`, measure again, and report."""

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np
from accelerate import Accelerator
from torch import nn
from torch.utils.data import Dataset, Subset
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from .config import PBUConfig
from .metrics import accuracy_of, predictions
from .mia import membership_inference
from .models import num_classes
from .trainer import PBUTrainer

logger = logging.get_logger(__name__)

RESULTS_FILE = "unlearning_results.json"


# Splits measured, each run through the model once: A_Df, A_Dr and forget-train accuracy, and the attack's
# members (retain_train) and non-members (retain_test).
MEASURED_SPLITS = ("forget_test", "retain_test", "forget_train", "retain_train")
# The forget class counts as recognised when the model's accuracy on its training images is above twice chance
# (capped halfway between chance and 100% for two classes) and above 1%: a model that scores at most that on the
# class's own training images never learnt it under these labels, and "forgetting" it would only measure noise.
RECOGNITION_FLOOR = 1.0


def attack_samples(splits: dict[str, Dataset], seed: int) -> dict[str, Dataset]:
    """`splits` with retain_train cut to as many members as the attack has non-members (retain_test), drawn before
    the model runs so that no output goes unused."""
    retain_train, retain_test = splits.get("retain_train"), splits.get("retain_test")
    if retain_train is None or retain_test is None or len(retain_train) <= len(retain_test):
        return splits
    indices = np.random.default_rng(seed).choice(len(retain_train), len(retain_test), replace=False)
    return {**splits, "retain_train": Subset(retain_train, np.sort(indices).tolist())}


def measure(
    model: nn.Module,
    splits: dict[str, Dataset],
    batch_size: int,
    accelerator: Accelerator | None = None,
    num_workers: int = 0,
    seed: int = 0,
) -> dict:
    """A_Df (forget test), A_Dr (retain test) and forget-train accuracy, in percent, and the membership-inference
    attacks' member rates on the forget-train set ("mia"; None without retained training data).

    One prediction pass per split serves every figure, on the model's device with `accelerator`'s processes and
    mixed precision (a default `Accelerator` when not given, e.g. for a baseline's plain model).
    """
    accelerator = accelerator or Accelerator()
    outputs = {
        name: predictions(model, split, batch_size, num_workers=num_workers, accelerator=accelerator)
        for name, split in attack_samples(splits, seed).items()
        if name in MEASURED_SPLITS and len(split)
    }

    def accuracy(name: str) -> float | None:
        return accuracy_of(*outputs[name]) if name in outputs else None

    return {
        "forget_accuracy": accuracy("forget_test"),
        "retain_accuracy": accuracy("retain_test"),
        "forget_train_accuracy": accuracy("forget_train"),
        "mia": membership_inference(outputs, seed),
    }


def recognition_threshold(classes: int) -> float:
    """Forget-train accuracy (percent) at or below which the model is taken not to know the forget class."""
    chance = 100.0 / classes
    return max(RECOGNITION_FLOOR, min(2 * chance, (chance + 100.0) / 2))


def check_model_knows_forget_classes(before: dict, classes: int) -> None:
    """Refuse to unlearn a class that the model does not recognise on this data: its accuracy on the class's own
    training images is near chance, so the labels do not mean what the model's outputs mean (another dataset, or
    ids matched to the wrong classes) and the run would "forget" it in one step."""
    threshold = recognition_threshold(classes)
    if before["forget_train_accuracy"] <= threshold:
        raise ValueError(
            f"The model does not recognise the forget class(es) on this data: its accuracy on their training images "
            f"is {before['forget_train_accuracy']:.1f}% before unlearning (at most {threshold:.1f}%, near chance for "
            f"{classes} classes). Check that the dataset is the one the model was trained on and that its labels "
            "match the model's label names (--match_labels_by_id takes the dataset's ids as the model's)."
        )


def unlearn(
    model: nn.Module,
    config: PBUConfig,
    splits: dict[str, Dataset],
    forget_classes: Sequence[int],
    resume_from_checkpoint: str | bool | None = None,
    eval_split: str | None = "test",
) -> tuple[PBUTrainer, dict]:
    """Run PBU on `splits["forget_train"]` and return the trainer and the before/after results.

    `splits` holds transformed datasets (`pixel_values`, `labels`): forget_train, forget_test, retain_test and
    optionally retain_train (the attack's members); `eval_split` names the split the test sets come from, for the
    results. The trainer is built first so that both measurements run on the training device, with its
    accelerator; the "before" one also checks, before the Fisher is computed, that the model recognises the class
    it is asked to forget.
    """
    # The output folder is published by `hf_pbu.publish` once saved in the source model's own format: Trainer's
    # own push would create the repository up front and upload bare state dicts of every checkpoint.
    trainer_args = dataclasses.replace(config, push_to_hub=False)
    trainer = PBUTrainer(model=model, args=trainer_args, train_dataset=splits["forget_train"])

    def measure_now() -> dict:
        return measure(trainer.model, splits, config.per_device_eval_batch_size, trainer.accelerator,
                       config.dataloader_num_workers, config.seed)

    before = measure_now()
    check_model_knows_forget_classes(before, num_classes(trainer.model))
    output = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    after = measure_now()
    results = {
        "forget_classes": list(forget_classes),
        "eval_split": eval_split,
        "before": before,
        "after": after,
        "fisher_estimator": trainer.fisher_estimator,
        "fisher_seconds": trainer.fisher_seconds,
        "fisher_memory_budget_bytes": trainer.fisher_memory.get("budget_bytes"),
        "fisher_peak_memory_bytes": trainer.fisher_memory.get("peak_bytes"),
        "unlearn_seconds": output.metrics.get("train_runtime", float("nan")),
        "stop_check_seconds": trainer.stop_check_seconds,
        "steps": trainer.state.global_step,
        "stopped_at_step": trainer.stopped_at_step,
        "forget_train_samples": len(splits["forget_train"]),
    }
    return trainer, results


def resume_checkpoint(config: PBUConfig) -> str | None:
    """The checkpoint to resume from: `--resume_from_checkpoint`, else the last one in `output_dir`, so that an
    interrupted run carries on where it stopped (theta* and the Fisher come from the source model, not from it).
    `PBUTrainer.train` refuses it if another run (model, forget data, objective) wrote it."""
    if config.resume_from_checkpoint is not None:
        return config.resume_from_checkpoint
    last = get_last_checkpoint(config.output_dir) if os.path.isdir(config.output_dir) else None
    if last is not None:
        logger.warning(
            f"Resuming the interrupted run from {last}; to start afresh, use another --output_dir or delete the "
            "checkpoint-* folders in it."
        )
    return last


def save_results(results: dict, output_dir: str) -> str:
    path = os.path.join(output_dir, RESULTS_FILE)
    os.makedirs(output_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    return path


def format_results_table(results: dict) -> str:
    """Before/after table of A_Df and A_Dr, the split they were measured on, and the Fisher and unlearning times."""

    def pct(value):
        return "   n/a" if value is None else f"{value:6.2f}"

    rows = [
        "                         before    after",
        f"A_Df (forget test, %)    {pct(results['before']['forget_accuracy'])}   "
        f"{pct(results['after']['forget_accuracy'])}",
        f"A_Dr (retain test, %)    {pct(results['before']['retain_accuracy'])}   "
        f"{pct(results['after']['retain_accuracy'])}",
        f"forget train (%)         {pct(results['before']['forget_train_accuracy'])}   "
        f"{pct(results['after']['forget_train_accuracy'])}",
    ]
    for attack in ("entropy_svc", "loss_logistic"):
        if results["before"].get("mia") and results["after"].get("mia"):
            rows.append(f"MIA {attack + ' (%)':21}{pct(results['before']['mia'][attack])}   "
                        f"{pct(results['after']['mia'][attack])}")
    if results.get("eval_split") and results["before"]["retain_accuracy"] is not None:
        rows.append(f"test sets: the {results['eval_split']!r} split"
                    + (" (part held out)" if results.get("eval_holdout_fraction") else ""))
    rows += [
        f"Fisher: {results['fisher_seconds']:.1f} s   unlearning: {results['unlearn_seconds']:.1f} s "
        f"({results['steps']} steps)",
    ]
    return "\n".join(rows)
