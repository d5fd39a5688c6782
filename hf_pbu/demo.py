"""The offline digits demo: a timm ResNet-18 trained on scikit-learn's real handwritten digits, then PBU."""

import os

import timm
import torch
from timm.models import save_for_hf
from transformers import TrainingArguments
from transformers.utils import logging

from .classifier_training import ClassifierTrainer
from .data import class_names, digits_dataset, with_image_transform

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


def eval_transform(model: torch.nn.Module):
    """The eval-time transform that the timm model's own pretrained config describes."""
    return timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False)


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


def save_digits_dataset(path: str) -> str:
    """scikit-learn's digits as a `save_to_disk` folder, the form `scripts/unlearn.py --dataset_name` reads."""
    if not os.path.exists(os.path.join(path, "dataset_dict.json")):
        digits_dataset().save_to_disk(path)
    return path


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
