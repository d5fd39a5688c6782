"""The splits an unlearning run reads: the forget set S_n (the only data PBU trains on), the test sets of the forgotten
and retained classes, and a sample of retained training images (the attacks' members), transformed for the model."""

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_dataset
from torch.utils.data import DataLoader
from transformers.utils import logging

from ..models import LoadedClassifier, num_classes
from ..sampling import seeded_subset
from .images import open_image
from .labels import align_labels, resolve_forget_classes
from .loading import class_names, load_image_dataset

logger = logging.get_logger(__name__)


def with_image_transform(
    dataset: Dataset,
    transform: Callable,
    image_column: str = "image",
    label_column: str = "label",
    in_chans: int = 3,
) -> Dataset:
    """`dataset` yielding `{"pixel_values", "labels"}` through `transform`, applied lazily (`with_transform`), on
    images read as `datasets` decodes them (`hf_pbu.data.images.open_image`: the column's Image feature, EXIF
    orientation, bit depth scaled to 8 bits) in the model's mode."""
    mode = {1: "L", 3: "RGB"}.get(in_chans, "RGB")
    feature = dataset.features.get(image_column)
    feature = feature if isinstance(feature, Image) else None

    def apply(batch: dict) -> dict:
        return {
            "pixel_values": [transform(open_image(image, mode, feature)) for image in batch[image_column]],
            "labels": batch[label_column],
        }

    return dataset.with_transform(apply)


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
    retain_train_samples: int = 0,
    seed: int = 0,
) -> dict[str, Dataset]:
    """forget_train (S_n: the only data PBU trains on), forget_test and retain_test; with `retain_train_samples`,
    also retain_train, a fixed random sample of the retained training data: the members of the MIA (PBU never
    trains on them)."""
    forget_train, retain_train = split_by_classes(data[train_split], forget_classes, label_column)
    forget_test, retain_test = split_by_classes(data[test_split], forget_classes, label_column)
    names = class_names(data[train_split], label_column)
    if len(forget_train) == 0:
        wanted = ", ".join(f"{c} ({names[c]})" for c in forget_classes)
        raise ValueError(f"The {train_split!r} split has no samples of the forget class(es) {wanted}: "
                         "nothing to unlearn from. Check `--forget_class` and the dataset.")
    splits = {"forget_train": forget_train, "forget_test": forget_test, "retain_test": retain_test}
    if retain_train_samples > 0:
        splits["retain_train"] = seeded_subset(retain_train, retain_train_samples, seed)
    return splits


def forget_folder_dataset(
    forget_dir: str, forget_classes: Sequence[int], names: Sequence[str], cache_dir: str | None = None
) -> Dataset:
    """The forget set of the forget-only mode, from a folder of images and nothing else (read by `datasets`'
    `imagefolder`, every image file of the folder and its sub-folders in one split, in path order).

    With one forget class every image in `forget_dir` (sub-folders included) is labelled with it; with several, each
    image must sit in a sub-folder named after its class (name or id).
    """
    if not os.path.isdir(forget_dir):
        raise FileNotFoundError(f"--forget_dir {forget_dir!r} is not a folder.")
    try:
        # data_files="**": every file in one split, where imagefolder would otherwise split by train/test names.
        folder = load_dataset("imagefolder", data_dir=forget_dir, data_files="**", split="train", drop_labels=True,
                              drop_metadata=True, cache_dir=cache_dir)
    except (FileNotFoundError, ValueError) as err:
        if isinstance(err, ValueError) and "corresponds to no data" not in str(err):
            raise
        raise ValueError(f"--forget_dir {forget_dir!r} holds no image files: nothing to unlearn from.") from None
    files = sorted(image["path"] for image in folder.cast_column("image", Image(decode=False))["image"])
    if len(forget_classes) == 1:
        labels = [forget_classes[0]] * len(files)
    else:
        wanted = {names[c]: c for c in forget_classes} | {str(c): c for c in forget_classes}
        parts = [os.path.relpath(f, forget_dir).split(os.sep) for f in files]
        if any(len(p) < 2 or p[0] not in wanted for p in parts):
            raise ValueError(f"With several forget classes, --forget_dir needs one sub-folder per forget class "
                             f"({', '.join(names[c] for c in forget_classes)}) and nothing else.")
        labels = [wanted[p[0]] for p in parts]
    features = Features({"image": Image(decode=False), "label": ClassLabel(names=list(names))})
    return Dataset.from_dict({"image": files, "label": labels}, features=features)


@dataclass
class UnlearningData:
    """What one run unlearns from and measures on: splits transformed for the model (`load_unlearning_splits`),
    the forget class ids, the class names in the model's id order, and where the test sets come from (`eval_split`,
    None in forget-only mode; `eval_holdout_fraction` when held out of the training split)."""

    splits: dict[str, Dataset]
    forget_classes: list[int]
    names: list[str]
    eval_split: str | None
    eval_holdout_fraction: float = 0.0


def load_unlearning_splits(
    loaded: LoadedClassifier,
    forget_class: Sequence[int | str],
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    dataset_dir: str | None = None,
    forget_dir: str | None = None,
    train_split: str = "train",
    eval_split: str | None = None,
    eval_holdout_fraction: float = 0.0,
    image_column: str | None = None,
    label_column: str | None = None,
    match_labels_by_id: bool = False,
    mia_samples: int = 1000,
    cache_dir: str | None = None,
    seed: int = 0,
) -> UnlearningData:
    """The run's data, transformed for `loaded.model`.

    From a dataset: forget_train, forget_test, retain_test and a retain_train sample for the MIA, labels aligned
    with the model's (`align_labels`). Forget-only (`forget_dir`): forget_train alone; the other splits are empty.
    """
    classes = num_classes(loaded.model)
    if forget_dir is not None:
        names = loaded.label_names or [str(i) for i in range(classes)]
        forget = resolve_forget_classes(forget_class, names)
        forget_train = forget_folder_dataset(forget_dir, forget, names, cache_dir)
        splits = {"forget_train": forget_train, "forget_test": forget_train.select([]),
                  "retain_test": forget_train.select([])}
        image_column, label_column, measured_on = "image", "label", None
        logger.warning("Forget-only mode: no retained data, so A_Dr and the membership-inference attack are skipped.")
    else:
        data = load_image_dataset(dataset_name, dataset_config, dataset_dir, train_split, eval_split, image_column,
                                  label_column, cache_dir, eval_holdout_fraction, seed)
        data = align_labels(data, loaded.label_names, classes, by_id=match_labels_by_id)
        names = data.names
        forget = resolve_forget_classes(forget_class, names)
        splits = unlearning_splits(data.splits, forget, label_column=data.label_column,
                                   retain_train_samples=mia_samples, seed=seed)
        image_column, label_column, measured_on = data.image_column, data.label_column, data.eval_split
    transformed = {
        name: with_image_transform(split, loaded.transform, image_column, label_column, loaded.in_chans)
        for name, split in splits.items()
    }
    return UnlearningData(transformed, forget, names, measured_on, eval_holdout_fraction)


def dataset_labels(dataset, batch_size: int = 256, collate_fn=None, num_workers: int = 0) -> np.ndarray:
    """All labels of a dataset of `{"pixel_values", "labels"}` items, in order: one pass over it (the transform runs,
    since a transformed dataset may map its raw labels to the model's)."""
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn, num_workers=num_workers)
    return np.concatenate([np.asarray(batch["labels"]).reshape(-1) for batch in loader]).astype(np.int64)
