"""One unlearning run: measure, unlearn with `PBUTrainer`, measure again, and report."""

import dataclasses
import json
import os
from collections.abc import Sequence

from datasets import Dataset
from torch import nn
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from .config import PBUConfig
from .metrics import accuracy
from .mia import membership_inference
from .trainer import PBUTrainer

logger = logging.get_logger(__name__)

RESULTS_FILE = "unlearning_results.json"


def measure(model: nn.Module, splits: dict[str, Dataset], batch_size: int) -> dict:
    """A_Df (forget test), A_Dr (retain test) and forget-train accuracy, in percent, and the membership-inference
    attacks' member rates on the forget-train set ("mia"; None without retained training data)."""
    results = {
        "forget_accuracy": accuracy(model, splits["forget_test"], batch_size) if len(splits["forget_test"]) else None,
        "retain_accuracy": accuracy(model, splits["retain_test"], batch_size) if len(splits["retain_test"]) else None,
        "forget_train_accuracy": accuracy(model, splits["forget_train"], batch_size),
        "mia": membership_inference(model, splits, batch_size),
    }
    return results


def unlearn(
    model: nn.Module,
    config: PBUConfig,
    splits: dict[str, Dataset],
    forget_classes: Sequence[int],
    resume_from_checkpoint: str | bool | None = None,
) -> tuple[PBUTrainer, dict]:
    """Run PBU on `splits["forget_train"]` and return the trainer and the before/after results.

    `splits` holds transformed datasets (`pixel_values`, `labels`): forget_train, forget_test, retain_test.
    """
    batch_size = config.per_device_eval_batch_size
    before = measure(model, splits, batch_size)
    # The output folder is published by `hf_pbu.publish` once saved in the source model's own format: Trainer's
    # own push would create the repository up front and upload bare state dicts of every checkpoint.
    trainer_args = dataclasses.replace(config, push_to_hub=False)
    trainer = PBUTrainer(model=model, args=trainer_args, train_dataset=splits["forget_train"])
    output = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    after = measure(trainer.model, splits, batch_size)
    results = {
        "forget_classes": list(forget_classes),
        "before": before,
        "after": after,
        "fisher_seconds": trainer.fisher_seconds,
        "unlearn_seconds": output.metrics.get("train_runtime", float("nan")),
        "steps": trainer.state.global_step,
        "stopped_at_step": trainer.stopped_at_step,
        "forget_train_samples": len(splits["forget_train"]),
    }
    return trainer, results


def resume_checkpoint(config: PBUConfig) -> str | None:
    """The checkpoint to resume from: `--resume_from_checkpoint`, else the last one in `output_dir`, so that an
    interrupted run carries on where it stopped (theta* and the Fisher come from the source model, not from it)."""
    if config.resume_from_checkpoint is not None:
        return config.resume_from_checkpoint
    last = get_last_checkpoint(config.output_dir) if os.path.isdir(config.output_dir) else None
    if last is not None:
        logger.warning(f"Resuming the interrupted run from {last}; use another --output_dir to start afresh.")
    return last


def save_results(results: dict, output_dir: str) -> str:
    path = os.path.join(output_dir, RESULTS_FILE)
    os.makedirs(output_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    return path


def format_results_table(results: dict) -> str:
    """Before/after table of A_Df and A_Dr with the Fisher and unlearning times."""

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
    rows += [
        f"Fisher: {results['fisher_seconds']:.1f} s   unlearning: {results['unlearn_seconds']:.1f} s "
        f"({results['steps']} steps)",
    ]
    return "\n".join(rows)
