"""A real PBU run in seconds, for the card and push tests: a tiny timm ResNet trained briefly on a slice of
scikit-learn's digits, then class 3 unlearned by `hf_pbu.unlearning.unlearn`, saved as the command saves it (the
trainer's `save_model` and `create_model_card`)."""

import functools
import os
import tempfile

import timm
import torch
from base_models import SMALL_IMAGE_PRETRAINED_CFG
from classifier_training import ClassifierTrainer
from datasets import DatasetDict
from offline_data import digits_dataset
from timm.models import save_for_hf
from transformers import TrainingArguments

from hf_pbu import PBUConfig
from hf_pbu.data import class_names, unlearning_splits, with_image_transform
from hf_pbu.models import eval_transform
from hf_pbu.results import UnlearningResults
from hf_pbu.unlearning import unlearn

FORGET_CLASSES = [3]
_FOLDERS: list[tempfile.TemporaryDirectory] = []  # alive until the interpreter exits, then removed


def tiny_unlearning_run(output_dir: str, base_dir: str | None = None) -> tuple[UnlearningResults, PBUConfig, list[str]]:
    """Train, unlearn, save weights and `unlearning_results.json` in `output_dir` (and the trained model before
    unlearning in `base_dir`, in timm's layout); (results, config, names).

    Runs on one CPU thread: a model this small gains nothing from two, and on a busy 2-core machine the
    threads' synchronisation made each step ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(output_dir, base_dir)
    finally:
        torch.set_num_threads(threads)


def _run(output_dir: str, base_dir: str | None) -> tuple[UnlearningResults, PBUConfig, list[str]]:
    torch.manual_seed(0)
    digits = digits_dataset()
    data = DatasetDict(train=digits["train"].select(range(300)), test=digits["test"].select(range(100)))
    names = class_names(data["train"])
    model = timm.create_model(
        "test_resnet",
        pretrained=False,
        num_classes=len(names),
        pretrained_cfg_overlay={**SMALL_IMAGE_PRETRAINED_CFG, "label_names": tuple(names)},
    )
    transform = eval_transform(model)
    train_args = TrainingArguments(
        output_dir=os.path.join(output_dir, "checkpoints"),
        num_train_epochs=5,
        learning_rate=3e-3,
        per_device_train_batch_size=32,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        use_cpu=True,
        disable_tqdm=True,
    )
    ClassifierTrainer(
        model=model, args=train_args, train_dataset=with_image_transform(data["train"], transform)
    ).train()
    if base_dir is not None:
        save_for_hf(model, base_dir, model_config={"label_names": names}, safe_serialization=True)

    splits = {
        k: with_image_transform(v, transform)
        for k, v in unlearning_splits(data, FORGET_CLASSES, retain_train_samples=100).items()
    }
    config = PBUConfig(
        output_dir=output_dir,
        num_train_epochs=5,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=128,
        fisher_cache_dir="none",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer, results = unlearn(model, config, splits, FORGET_CLASSES, class_names=names)
    trainer.save_model()
    trainer.create_model_card(dataset_name="sklearn-digits")
    return results, config, names


@functools.cache
def shared_unlearning_run() -> tuple[str, UnlearningResults, PBUConfig, list[str]]:
    """`tiny_unlearning_run` once per test session, in a temporary folder: copy it before changing it."""
    folder = tempfile.TemporaryDirectory(prefix="hf_pbu_tiny_run_")
    _FOLDERS.append(folder)
    run_dir = os.path.join(folder.name, "run")
    return (run_dir, *tiny_unlearning_run(run_dir, shared_base_model_dir()))


@functools.cache
def shared_base_model_dir() -> str:
    """Where the shared run saves its trained model before unlearning (a sibling of its output folder)."""
    folder = tempfile.TemporaryDirectory(prefix="hf_pbu_tiny_base_")
    _FOLDERS.append(folder)
    return folder.name
