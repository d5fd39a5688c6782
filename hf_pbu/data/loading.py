"""Any `datasets` image-classification source read as a "train" and a "test" split: Hub ids, imagefolders and
`save_to_disk` folders, their image and label columns found, labels as a ClassLabel, the evaluation split chosen."""

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    Features,
    Image,
    LargeList,
    List,
    Value,
    load_dataset,
    load_dataset_builder,
    load_from_disk,
)
from transformers.utils import logging

logger = logging.get_logger(__name__)

LABEL_COLUMN_GUESSES = ("label", "labels", "fine_label", "class", "target")
EVAL_SPLIT_GUESSES = ("test", "validation")


def class_names(dataset: Dataset, label_column: str = "label") -> list[str]:
    feature = dataset.features[label_column]
    if not isinstance(feature, ClassLabel):
        raise ValueError(f"Column {label_column!r} is not a ClassLabel; cast it with `dataset.class_encode_column`.")
    return list(feature.names)


@dataclass
class ImageData:
    """A "train" and a "test" split with the names of their image and label (ClassLabel) columns; `eval_split`
    names the source split of "test" (e.g. "validation"), `holdout_fraction` is set when "test" was held out of
    the training split instead. `other_label_columns`: the dataset's other columns that could hold the labels, when
    the label column was detected rather than given (named in the error when its classes do not match the model's)."""

    splits: DatasetDict
    image_column: str
    label_column: str
    eval_split: str = "test"
    holdout_fraction: float = 0.0
    other_label_columns: tuple[str, ...] = ()  # where the label column was detected: the other candidates

    @property
    def names(self) -> list[str]:
        return class_names(self.splits["train"], self.label_column)


def _is_saved_dataset(path: str | None) -> bool:
    return bool(path) and any(os.path.isfile(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))


def _load_source(dataset_name: str | None, dataset_config: str | None, dataset_dir: str | None,
                 cache_dir: str | None, needed: Callable[[list[str]], list[str]]) -> DatasetDict:
    """The dataset's splits: those that `needed` picks among the available ones, where `datasets` can load splits
    alone (data files listed per split), so that e.g. ImageNet's unlabelled test split is never prepared."""
    if _is_saved_dataset(dataset_dir) or _is_saved_dataset(dataset_name):
        saved = load_from_disk(dataset_dir or dataset_name)  # memory-mapped: nothing to prepare
        return saved if isinstance(saved, DatasetDict) else DatasetDict(train=saved)
    if dataset_dir and not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"--dataset_dir {dataset_dir!r} is not a folder.")
    if dataset_name is None and dataset_dir is None:
        raise ValueError("Pass --dataset_name (a Hub dataset id, or 'imagefolder' with --dataset_dir).")
    source = {"path": dataset_name or "imagefolder", "name": dataset_config, "data_dir": dataset_dir,
              "cache_dir": cache_dir}
    data_files = load_dataset_builder(**source).config.data_files
    if data_files:
        wanted = needed(list(data_files))
        if len(wanted) < len(data_files):
            return load_dataset(**source, data_files={split: data_files[split] for split in wanted})
    return load_dataset(**source)


def label_columns(features: Features) -> list[str]:
    """The columns that may hold the labels, in the order they are tried: every ClassLabel, then the columns with a
    usual label name."""
    labelled = [c for c in features if isinstance(features[c], ClassLabel)]
    return labelled + [c for c in LABEL_COLUMN_GUESSES if c in features and c not in labelled]


def check_single_label(features: Features, label_column: str) -> None:
    """Refuse a label column of lists (multi-label data): class unlearning forgets the images of a class, which
    needs one class per image."""
    if isinstance(features[label_column], (List, LargeList, list)):
        others = [c for c in label_columns(features) if c != label_column
                  and not isinstance(features[c], (List, LargeList, list))]
        hint = (f"pass --label_column with a column of one class per image ({', '.join(map(repr, others))})" if others
                else "give each image one class (a ClassLabel or integer column) and pass it as --label_column")
        raise ValueError(
            f"The label column {label_column!r} holds lists ({features[label_column]}): several labels per image "
            f"(multi-label data). Class unlearning needs one class per image: {hint}."
        )


def detect_columns(
    features: Features, image_column: str | None = None, label_column: str | None = None
) -> tuple[str, str]:
    """(image column, label column): the ones given, else the first Image feature and the first ClassLabel (or a
    column with a usual label name). A label column of lists (multi-label) is refused."""
    columns = list(features)
    for given, flag in ((image_column, "--image_column"), (label_column, "--label_column")):
        if given is not None and given not in features:
            raise ValueError(f"The dataset has no column {given!r} (columns: {', '.join(columns)}). "
                             f"Pass {flag} with one of them.")
    image_column = image_column or next((c for c in columns if isinstance(features[c], Image)), None)
    if image_column is None:
        raise ValueError(f"Found no image column among {', '.join(columns)}: pass --image_column.")
    label_column = label_column or next(iter(label_columns(features)), None)
    if label_column is None:
        raise ValueError(f"Found no label column among {', '.join(columns)} (for an imagefolder, put the images "
                         "of each class in a sub-folder named after it): pass --label_column.")
    check_single_label(features, label_column)
    return image_column, label_column


def _encode_labels(data: DatasetDict, label_column: str) -> DatasetDict:
    """Make the label column a ClassLabel, with one mapping for every split: integer ids keep their values (names
    "0", "1", ...), strings are encoded in the sorted order of the union of every split's strings. (Each split
    encoded on its own, as `DatasetDict.class_encode_column` does, shifts the ids of a split that lacks a class: its
    "cherry" would be another split's "banana".)"""
    feature = data["train"].features[label_column]
    if isinstance(feature, ClassLabel):
        return data
    if isinstance(feature, Value) and feature.dtype.startswith("int"):
        count = 1 + max(int(np.max(split[label_column])) for split in data.values() if len(split))
        return data.cast_column(label_column, ClassLabel(names=[str(i) for i in range(count)]))
    names = sorted({str(value) for split in data.values() for value in split.unique(label_column)
                    if value is not None})
    return data.cast_column(label_column, ClassLabel(names=names))


def choose_eval_split(available: Sequence[str], train_split: str, eval_split: str | None,
                      holdout_fraction: float) -> str | None:
    """The split to measure A_Df/A_Dr and the MIA's non-members on: `eval_split` if given, else "test", else
    "validation"; None when part of the training split is to be held out instead (`holdout_fraction`).

    Never a silent hold-out: images held out of the split a model was trained on are not unseen by it."""
    if holdout_fraction:
        if not 0 < holdout_fraction < 1:
            raise ValueError(f"--eval_holdout_fraction must be between 0 and 1, got {holdout_fraction}.")
        if eval_split is not None:
            raise ValueError("Pass either --eval_split or --eval_holdout_fraction, not both.")
        return None
    if eval_split is not None:
        if eval_split not in available:
            raise ValueError(f"The dataset has no split {eval_split!r} (splits: {', '.join(available)}): pass "
                             "--eval_split with one of them.")
        if eval_split == train_split:
            raise ValueError(f"--eval_split {eval_split!r} is the training split: measure on images the model "
                             "was not trained on.")
        return eval_split
    found = next((name for name in EVAL_SPLIT_GUESSES if name in available and name != train_split), None)
    if found is None:
        raise ValueError(
            f"The dataset has no {' or '.join(map(repr, EVAL_SPLIT_GUESSES))} split to measure on (splits: "
            f"{', '.join(available)}): pass --eval_split with a labelled split the model was not trained on, or "
            f"--eval_holdout_fraction 0.2 to hold out part of {train_split!r} (only meaningful if the model was not "
            "trained on those images)."
        )
    return found


def check_labels(dataset: Dataset, split: str, label_column: str, flag: str) -> None:
    """Refuse a split with labels outside the dataset's classes (e.g. ImageNet's unlabelled test split, all -1):
    they would read as a 0% accuracy and break the attack."""
    count = len(class_names(dataset, label_column))
    labels = np.asarray(dataset[label_column], dtype=np.int64)
    bad = labels[(labels < 0) | (labels >= count)]
    if len(bad):
        unlabelled = " (it looks unlabelled)" if (bad == -1).all() else ""
        raise ValueError(
            f"The {split!r} split has {len(bad)} label(s) outside the classes 0..{count - 1} (e.g. {bad[0]})"
            f"{unlabelled}: pass {flag} with a labelled split, e.g. {flag} validation."
        )


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    dataset_dir: str | None = None,
    train_split: str = "train",
    eval_split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    cache_dir: str | None = None,
    eval_holdout_fraction: float = 0.0,
    seed: int = 0,
) -> ImageData:
    """Any `datasets` image-classification source as a "train" and a "test" split.

    Sources: a Hub id (with `dataset_config`), a local `imagefolder` (`dataset_dir` with train/ and test/ folders
    of one sub-folder per class), or a folder written by `save_to_disk`. Images stay undecoded until used, so
    that an unreadable file is reported by name (`open_image`). "test" is the split `choose_eval_split` picks, or,
    with `eval_holdout_fraction`, that fraction of the training split held out (stratified, fixed seed).
    """

    def needed(available: list[str]) -> list[str]:
        if train_split not in available:
            raise ValueError(f"The dataset has no split {train_split!r} (splits: {', '.join(available)}): pass "
                             "--train_split.")
        source = choose_eval_split(available, train_split, eval_split, eval_holdout_fraction)
        return [train_split, *([source] if source else [])]

    data = _load_source(dataset_name, dataset_config, dataset_dir, cache_dir, needed)
    _, *evaluation = needed(list(data))  # again: a saved dataset is loaded whole
    source = evaluation[0] if evaluation else None
    given_label_column = label_column
    image_column, label_column = detect_columns(data[train_split].features, image_column, label_column)
    others = () if given_label_column else tuple(
        c for c in label_columns(data[train_split].features) if c not in (label_column, image_column))
    splits = DatasetDict(train=data[train_split], **({"test": data[source]} if source else {}))
    feature = splits["train"].features[image_column]
    undecoded = Image(mode=feature.mode if isinstance(feature, Image) else None, decode=False)
    splits = _encode_labels(splits, label_column).cast_column(image_column, undecoded)
    check_labels(splits["train"], train_split, label_column, "--train_split")
    if source:
        check_labels(splits["test"], source, label_column, "--eval_split")
        return ImageData(splits, image_column, label_column, source, other_label_columns=others)
    logger.warning(f"Measuring on {eval_holdout_fraction:.0%} of {train_split!r} held out (stratified, seed {seed}).")
    splits = splits["train"].train_test_split(test_size=eval_holdout_fraction, seed=seed,
                                              stratify_by_column=label_column)
    return ImageData(splits, image_column, label_column, train_split, eval_holdout_fraction, others)
