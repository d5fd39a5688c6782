"""The benchmark's offline datasets, as `DatasetDict`s with an `image` column and a `label` ClassLabel.

- digits: scikit-learn's 1,797 real 8x8 handwritten digits (installs with scikit-learn);
- Fashion-MNIST (60k train / 10k test, 28x28 grayscale) from Debian's `dataset-fashion-mnist` idx files: real
  images that install offline through the system package manager.
"""

import gzip
import os

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage


def digits_dataset(test_size: float = 0.2, seed: int = 0) -> DatasetDict:
    """scikit-learn's 1,797 real 8x8 handwritten digits as a `DatasetDict` (stratified train/test split) with an
    `image` column (grayscale PIL) and a `label` ClassLabel named digit_0 ... digit_9. Installs offline."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    train_idx, test_idx = train_test_split(
        np.arange(len(pixels)), test_size=test_size, random_state=seed, stratify=digits.target
    )
    features = Features({"image": Image(), "label": ClassLabel(names=[f"digit_{d}" for d in range(10)])})

    def split(indices: np.ndarray) -> Dataset:
        images = [PILImage.fromarray(pixels[i], mode="L") for i in indices]
        return Dataset.from_dict({"image": images, "label": digits.target[indices].tolist()}, features=features)

    return DatasetDict(train=split(train_idx), test=split(test_idx))


def save_digits_dataset(path: str) -> str:
    """scikit-learn's digits as a `save_to_disk` folder, the form `scripts/unlearn.py --dataset_name` reads."""
    if not os.path.exists(os.path.join(path, "dataset_dict.json")):
        digits_dataset().save_to_disk(path)
    return path


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

