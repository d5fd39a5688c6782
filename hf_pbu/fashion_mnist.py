"""Fashion-MNIST (60k train / 10k test, 28x28 grayscale) from Debian's `dataset-fashion-mnist` idx files.

Real images that install offline through the system package manager, loaded into the same `DatasetDict` shape as
`hf_pbu.data.digits_dataset` (an `image` column and a `label` ClassLabel).
"""

import gzip
import os

import numpy as np
import timm
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from timm.models import save_for_hf

from .classifier_training import ClassifierTrainer
from .data import with_image_transform
from .demo import SMALL_IMAGE_PRETRAINED_CFG, eval_transform, training_recipe

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_idx(path: str) -> np.ndarray:
    """An idx file (optionally gzipped) as a uint8 array: magic 0x0000 08 <ndim>, then big-endian int32 dims."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an unsigned-byte idx file.")
    ndim = raw[3]
    shape = tuple(np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_dataset(data_dir: str = DEFAULT_DIR) -> DatasetDict:
    """Fashion-MNIST's train and test splits with an `image` column (grayscale) and a `label` ClassLabel."""
    features = Features({"image": Image(), "label": ClassLabel(names=list(CLASS_NAMES))})
    splits = {}
    for split, (images_file, labels_file) in _FILES.items():
        paths = [os.path.join(data_dir, name) for name in (images_file, labels_file)]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(
                f"Fashion-MNIST files not found: {', '.join(missing)}. Install them with "
                "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or pass `data_dir` pointing to the "
                "four idx files of https://github.com/zalandoresearch/fashion-mnist."
            )
        images, labels = (_read_idx(p) for p in paths)
        # Arrays of shape [N, 28, 28] are encoded by the Image feature as grayscale PNGs.
        splits[split] = Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)
    return DatasetDict(splits)


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
        num_classes=len(CLASS_NAMES),
        pretrained_cfg_overlay={**SMALL_IMAGE_PRETRAINED_CFG, "label_names": CLASS_NAMES},
        **FASHION_MODEL_ARGS,
    )
    args = training_recipe(os.path.join(save_directory, "checkpoints"), epochs, seed, label_smoothing)
    train = with_image_transform(data["train"], eval_transform(model))
    ClassifierTrainer(model=model, args=args, train_dataset=train).train()
    save_for_hf(model.cpu(), save_directory, model_args=FASHION_MODEL_ARGS, safe_serialization=True)
    return save_directory
