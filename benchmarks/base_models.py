"""The benchmark's and the demo's base classifiers: timm ResNet-18s trained on the offline datasets
(`offline_data`), saved in timm's Hub layout, and the recipe that trains them (also the retrain oracle's)."""

import os

import timm
import torch
from classifier_training import ClassifierTrainer
from datasets import DatasetDict
from offline_data import CLASS_NAMES as FASHION_CLASS_NAMES
from offline_data import digits_dataset
from timm.models import save_for_hf
from transformers import TrainingArguments
from transformers.utils import logging

from hf_pbu.data import class_names, with_image_transform
from hf_pbu.models import eval_transform

logger = logging.get_logger(__name__)

DIGITS_ARCH = "resnet18"
# Small grayscale images (8x8 digits, 28x28 Fashion-MNIST) upsampled to 32x32: the stem's stride-4 downsampling
# leaves an 8x8 feature map.
SMALL_IMAGE_PRETRAINED_CFG = {
    "input_size": (3, 32, 32),
    "crop_pct": 1.0,
    "interpolation": "bilinear",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
}


def training_recipe(
    output_dir: str, epochs: float = 12, seed: int = 0, label_smoothing: float = 0.1
) -> TrainingArguments:
    """How the demo and benchmark classifiers are trained; also the recipe of the retrain-from-scratch oracle.
    timm's recipes smooth labels (0.1, the default); most published classifiers use plain cross-entropy (0)."""
    return TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=epochs,
        learning_rate=2e-3,
        per_device_train_batch_size=64,
        lr_scheduler_type="cosine",
        warmup_steps=20,
        weight_decay=1e-4,
        label_smoothing_factor=label_smoothing,
        save_strategy="no",
        logging_steps=20,
        remove_unused_columns=False,
        report_to="none",
        seed=seed,
    )


def train_digits_model(save_directory: str, epochs: float = 12, seed: int = 0, label_smoothing: float = 0.1) -> str:
    """Train the demo classifier once and save it in timm's Hub layout; reuse it if it is already there."""
    if os.path.exists(os.path.join(save_directory, "config.json")):
        return save_directory
    torch.manual_seed(seed)
    data = digits_dataset()
    names = class_names(data["train"])
    model = timm.create_model(
        DIGITS_ARCH,
        pretrained=False,
        num_classes=len(names),
        pretrained_cfg_overlay={**SMALL_IMAGE_PRETRAINED_CFG, "label_names": tuple(names)},
    )
    args = training_recipe(os.path.join(save_directory, "checkpoints"), epochs, seed, label_smoothing)
    train = with_image_transform(data["train"], eval_transform(model))
    ClassifierTrainer(model=model, args=args, train_dataset=train).train()
    # The class names go into config.json, where `load_classifier` reads them to match a dataset's labels by name.
    save_for_hf(model.cpu(), save_directory, model_config={"label_names": names}, safe_serialization=True)
    logger.info(f"Saved the digits classifier to {save_directory}")
    return save_directory


FASHION_ARCH = "resnet18"
# A quarter-width ResNet-18 (0.7M parameters): the full width takes ~15 min per epoch of the 60k images on a
# 2-core CPU, this one under a minute. 28x28 images upsampled to 32x32, as for the digits model.
FASHION_MODEL_ARGS = {"channels": (16, 32, 64, 128), "stem_width": 16}


def train_fashion_mnist_model(
    save_directory: str, data: DatasetDict, epochs: float = 4, seed: int = 0, label_smoothing: float = 0.1
) -> str:
    """Train the benchmark's Fashion-MNIST classifier once (timm Hub layout); reuse it if already there."""
    if os.path.exists(os.path.join(save_directory, "config.json")):
        return save_directory
    torch.manual_seed(seed)
    model = timm.create_model(
        FASHION_ARCH,
        pretrained=False,
        num_classes=len(FASHION_CLASS_NAMES),
        pretrained_cfg_overlay={**SMALL_IMAGE_PRETRAINED_CFG, "label_names": FASHION_CLASS_NAMES},
        **FASHION_MODEL_ARGS,
    )
    args = training_recipe(os.path.join(save_directory, "checkpoints"), epochs, seed, label_smoothing)
    train = with_image_transform(data["train"], eval_transform(model))
    ClassifierTrainer(model=model, args=args, train_dataset=train).train()
    save_for_hf(model.cpu(), save_directory, model_args=FASHION_MODEL_ARGS, safe_serialization=True)
    return save_directory
