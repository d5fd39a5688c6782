"""Image-classification data as `datasets` objects, and the splits that unlearning needs."""

from collections.abc import Callable, Sequence

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


def with_image_transform(
    dataset: Dataset,
    transform: Callable,
    image_column: str = "image",
    label_column: str = "label",
    in_chans: int = 3,
) -> Dataset:
    """`dataset` yielding `{"pixel_values", "labels"}` through `transform`, applied lazily (`with_transform`)."""
    mode = {1: "L", 3: "RGB"}.get(in_chans, "RGB")

    def apply(batch: dict) -> dict:
        return {
            "pixel_values": [transform(image.convert(mode)) for image in batch[image_column]],
            "labels": batch[label_column],
        }

    return dataset.with_transform(apply)


def class_names(dataset: Dataset, label_column: str = "label") -> list[str]:
    feature = dataset.features[label_column]
    if not isinstance(feature, ClassLabel):
        raise ValueError(f"Column {label_column!r} is not a ClassLabel; cast it with `dataset.class_encode_column`.")
    return list(feature.names)


def resolve_forget_classes(requested: Sequence[int | str], names: Sequence[str]) -> list[int]:
    """Class ids for `requested` ids or names, with a clear error for anything not among `names`."""
    resolved = []
    for item in requested:
        text = str(item)
        if text in names:
            resolved.append(names.index(text))
        elif text.lstrip("-").isdigit():
            class_id = int(text)
            if not 0 <= class_id < len(names):
                raise ValueError(
                    f"Forget class {class_id} is out of range: the classes are 0..{len(names) - 1}. "
                    f"Pass an id in that range or a name such as {names[0]!r}."
                )
            resolved.append(class_id)
        else:
            raise ValueError(f"Unknown class name {text!r}. Known names: {', '.join(names[:20])}"
                             f"{' ...' if len(names) > 20 else ''}.")
    if not resolved:
        raise ValueError("Name at least one class to forget (`--forget_class`).")
    return sorted(set(resolved))


def split_by_classes(dataset: Dataset, classes: Sequence[int], label_column: str = "label") -> tuple[Dataset, Dataset]:
    """(samples whose label is in `classes`, all the others)."""
    labels = np.asarray(dataset[label_column])
    inside = np.isin(labels, list(classes))
    return dataset.select(np.flatnonzero(inside)), dataset.select(np.flatnonzero(~inside))


def unlearning_splits(
    data: DatasetDict,
    forget_classes: Sequence[int],
    train_split: str = "train",
    test_split: str = "test",
    label_column: str = "label",
) -> dict[str, Dataset]:
    """forget_train (S_n: the only data PBU trains on), forget_test and retain_test."""
    forget_train, _ = split_by_classes(data[train_split], forget_classes, label_column)
    forget_test, retain_test = split_by_classes(data[test_split], forget_classes, label_column)
    names = class_names(data[train_split], label_column)
    if len(forget_train) == 0:
        wanted = ", ".join(f"{c} ({names[c]})" for c in forget_classes)
        raise ValueError(f"The {train_split!r} split has no samples of the forget class(es) {wanted}: "
                         "nothing to unlearn from. Check `--forget_class` and the dataset.")
    return {"forget_train": forget_train, "forget_test": forget_test, "retain_test": retain_test}
