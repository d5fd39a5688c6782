"""Measuring a classifier: predictions and accuracy on a dataset, and A_Df, A_Dr, forget-train accuracy and the
membership-inference attacks of an unlearning run, through Accelerate: the same figures in one process or many.

A_Df and A_Dr are computed by the package's `evaluate` module (`hf_pbu/metrics/unlearning_accuracy`, loaded by path
from the installed package). Each process runs its shard of a DataLoader prepared by
`Accelerator.prepare_data_loader`, in the run's mixed precision (`accelerator.autocast`), and `gather_for_metrics`
collects the outputs, dropping the duplicates with which the last shards are padded. Inputs go to the model's own
device, so the gathered tensors live where the collective backend expects them (the training device under a
`Trainer`).
"""

from contextlib import nullcontext
from functools import cache
from pathlib import Path

import evaluate
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..models import classifier_logits, eval_mode
from ..results import Measurement
from ..sampling import seeded_subset
from .mia import membership_inference


@torch.no_grad()
def predictions(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 128,
    collate_fn=None,
    num_workers: int = 0,
    accelerator: Accelerator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, C] float32, labels [N]) of every sample of `dataset`, in dataset order, on CPU.

    `accelerator`: the run's; its processes share the work and all get the same outputs, in its mixed precision.
    Without one, this process alone reads the whole dataset (a baseline's plain model, or work done on the main
    process only)."""
    if len(dataset) == 0:
        raise ValueError("Cannot run the model on an empty dataset.")
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn, num_workers=num_workers)
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader, device_placement=False)
    logits, labels = [], []
    with eval_mode(model), (accelerator.autocast() if accelerator is not None else nullcontext()):
        for batch in loader:
            batch_logits = classifier_logits(model, batch["pixel_values"].to(device)).float()
            batch_labels = torch.as_tensor(batch["labels"]).to(device)
            if accelerator is not None:
                batch_logits, batch_labels = accelerator.gather_for_metrics((batch_logits, batch_labels))
            logits.append(batch_logits.cpu())
            labels.append(batch_labels.cpu())
    return torch.cat(logits), torch.cat(labels)


def accuracy_of(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent of `logits` against `labels`."""
    return float(100.0 * (logits.argmax(-1) == labels).double().mean())


def accuracy(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 128,
    collate_fn=None,
    num_workers: int = 0,
    accelerator: Accelerator | None = None,
) -> float:
    """Top-1 accuracy in percent of `model` on `dataset` (items with `pixel_values` and `labels`), over the whole
    dataset whatever the number of processes."""
    return accuracy_of(*predictions(model, dataset, batch_size, collate_fn, num_workers, accelerator))


# The evaluate module shipped inside the package (package data), loadable offline by path.
UNLEARNING_ACCURACY_METRIC = str(Path(__file__).resolve().parents[1] / "metrics" / "unlearning_accuracy")
# Splits measured, each run through the model once: A_Df, A_Dr and forget-train accuracy, and the attack's
# members (retain_train) and non-members (retain_test).
MEASURED_SPLITS = ("forget_test", "retain_test", "forget_train", "retain_train")


@cache
def unlearning_accuracy_metric() -> evaluate.EvaluationModule:
    """The A_Df/A_Dr `evaluate` module, kept in memory (no cache files that processes would share)."""
    return evaluate.load(UNLEARNING_ACCURACY_METRIC, keep_in_memory=True)


def attack_samples(splits: dict[str, Dataset], seed: int) -> dict[str, Dataset]:
    """`splits` with retain_train cut to as many members as the attack has non-members (retain_test), drawn before
    the model runs so that no output goes unused."""
    retain_train, retain_test = splits.get("retain_train"), splits.get("retain_test")
    if retain_train is None or retain_test is None:
        return splits
    return {**splits, "retain_train": seeded_subset(retain_train, len(retain_test), seed)}


def test_accuracies(outputs: dict[str, tuple[torch.Tensor, torch.Tensor]], forget_classes: list[int]) -> dict:
    """A_Df and A_Dr (None for a side without samples) by the `evaluate` module, on the forget_test and retain_test
    outputs together."""
    parts = [outputs[name] for name in ("forget_test", "retain_test") if name in outputs]
    if not parts:
        return {"forget_accuracy": None, "retain_accuracy": None}
    logits, labels = (torch.cat(tensors) for tensors in zip(*parts))
    return unlearning_accuracy_metric().compute(
        predictions=logits.argmax(-1).tolist(), references=labels.tolist(), forget_classes=forget_classes
    )


def measure(
    model: nn.Module,
    splits: dict[str, Dataset],
    batch_size: int,
    accelerator: Accelerator | None = None,
    num_workers: int = 0,
    seed: int = 0,
    return_outputs: bool = False,
    known_outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> Measurement | tuple[Measurement, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """A_Df (forget test), A_Dr (retain test) and forget-train accuracy, and the membership-inference attacks' member
    rates on the forget-train set (None without retained training data). The forget classes are those of
    forget_train.

    One prediction pass per split serves every figure, on the model's device with `accelerator`'s processes and
    mixed precision (this process alone when not given, e.g. for a baseline's plain model); `known_outputs` holds
    (logits, labels) of splits already passed through the model as it is (the trainer's last pass over the forget
    set), which are not passed again. With `return_outputs`, also the (logits, labels) of every split measured.
    """
    known = known_outputs or {}
    outputs = {
        name: known[name] if name in known else predictions(model, split, batch_size, num_workers=num_workers,
                                                             accelerator=accelerator)
        for name, split in attack_samples(splits, seed).items()
        if name in MEASURED_SPLITS and len(split)
    }
    forget_classes = sorted(set(outputs["forget_train"][1].tolist())) if "forget_train" in outputs else []
    tests = test_accuracies(outputs, forget_classes) if forget_classes else {}
    measurement = Measurement(
        forget_test_accuracy=tests.get("forget_accuracy"),
        retain_test_accuracy=tests.get("retain_accuracy"),
        forget_train_accuracy=accuracy_of(*outputs["forget_train"]) if "forget_train" in outputs else None,
        mia=membership_inference(outputs, seed),
    )
    return (measurement, outputs) if return_outputs else measurement
