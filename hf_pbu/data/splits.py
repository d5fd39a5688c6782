"""Image-classification data as `datasets` objects, and the splits that unlearning needs."""

import dataclasses
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

from ..models import LoadedClassifier, generic_label_names, num_classes
from .images import open_image

logger = logging.get_logger(__name__)

LABEL_COLUMN_GUESSES = ("label", "labels", "fine_label", "class", "target")
EVAL_SPLIT_GUESSES = ("test", "validation")


def seeded_indices(total: int, count: int, seed: int | np.random.Generator, sort: bool = True) -> np.ndarray:
    """`count` distinct indices among `total`, drawn by `np.random.default_rng(seed)` (or by the generator given,
    to draw several subsets in turn), sorted unless `sort` is False: every seeded subset of the library."""
    indices = np.random.default_rng(seed).choice(total, count, replace=False)
    return np.sort(indices) if sort else indices


def with_image_transform(
    dataset: Dataset,
    transform: Callable,
    image_column: str = "image",
    label_column: str = "label",
    in_chans: int = 3,
) -> Dataset:
    """`dataset` yielding `{"pixel_values", "labels"}` through `transform`, applied lazily (`with_transform`), on
    images read as `datasets` decodes them (`hf_pbu.images.open_image`: the column's Image feature, EXIF orientation,
    bit depth scaled to 8 bits) in the model's mode."""
    mode = {1: "L", 3: "RGB"}.get(in_chans, "RGB")
    feature = dataset.features.get(image_column)
    feature = feature if isinstance(feature, Image) else None

    def apply(batch: dict) -> dict:
        return {
            "pixel_values": [transform(open_image(image, mode, feature)) for image in batch[image_column]],
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
    if len(set(resolved)) == len(names):
        raise ValueError(f"--forget_class names all {len(names)} classes: forgetting every class leaves no classifier. "
                         "Name only the classes to forget.")
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
        count = min(retain_train_samples, len(retain_train))
        splits["retain_train"] = retain_train.select(seeded_indices(len(retain_train), count, seed))
    return splits


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
    """Make the label column a ClassLabel: integer ids keep their values (names "0", "1", ...), strings are
    encoded in sorted order."""
    feature = data["train"].features[label_column]
    if isinstance(feature, ClassLabel):
        return data
    if isinstance(feature, Value) and feature.dtype.startswith("int"):
        count = 1 + max(int(np.max(split[label_column])) for split in data.values() if len(split))
        return data.cast_column(label_column, ClassLabel(names=[str(i) for i in range(count)]))
    return data.class_encode_column(label_column)


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


def _relabel(dataset: Dataset, label_column: str, lookup: Sequence[int], names: Sequence[str]) -> Dataset:
    """`dataset` with labels mapped through `lookup` and named `names`; only the label column is rewritten."""
    labels = np.asarray(lookup)[np.asarray(dataset[label_column], dtype=np.int64)]
    return dataset.remove_columns(label_column).add_column(
        label_column, labels.tolist(), feature=ClassLabel(names=list(names))
    )


def other_label_columns_hint(data: ImageData) -> str:
    """The sentence naming the dataset's other label columns and `--label_column`, for an error about the labels,
    when the label column was detected and others could hold the labels the model was trained on; else ""."""
    if not data.other_label_columns:
        return ""
    described = ", ".join(
        f"{column!r}" + (f" ({len(class_names(data.splits['train'], column))} classes)"
                         if isinstance(data.splits["train"].features[column], ClassLabel) else "")
        for column in data.other_label_columns
    )
    return (f" The labels were read from {data.label_column!r}, the first label column; the dataset also has "
            f"{described}: pass --label_column {data.other_label_columns[0]} if the model was trained on it.")


def align_labels(data: ImageData, model_names: Sequence[str] | None, model_classes: int,
                 by_id: bool = False) -> ImageData:
    """Put the dataset's labels in the model's class-id space.

    Equal names: nothing to do. Both sides named, dataset names all among the model's: mapped by name. Either side
    unnamed (or `by_id`): ids are taken as they are, which needs the same number of classes, or, with `by_id`, no
    more classes than the model's head (a 1000-class head fine-tuned on a subset: dataset id i is output i). Anything
    else is refused, naming the flag or column to change, since unlearning "class 3" of the wrong label space would
    silently forget the wrong class.
    """
    names = data.names
    if model_names is not None and list(model_names) == names:
        return data
    hint = other_label_columns_hint(data)
    if model_names is None or by_id or generic_label_names(names):
        if len(names) > model_classes or (len(names) < model_classes and not by_id):
            fix = (" If the dataset's class ids are the model's outputs (a larger head fine-tuned on these classes), "
                   "pass --match_labels_by_id; otherwise" if len(names) < model_classes else "")
            raise ValueError(
                f"The model has {model_classes} classes but the dataset has {len(names)}.{fix} use the dataset the "
                f"model was trained on, or a model fine-tuned on this dataset.{hint}"
            )
        if model_names is None and len(names) == model_classes:
            return data
        lookup = range(len(names))
        target = list(model_names) if model_names else [*names, *map(str, range(len(names), model_classes))]
        logger.warning("Matching the dataset's classes to the model's by id, not by name"
                       + (f" (dataset ids 0..{len(names) - 1} of the model's {model_classes} outputs)."
                          if len(names) < model_classes else "."))
    else:
        missing = [name for name in names if name not in model_names]
        if missing:
            by_id_hint = " or pass --match_labels_by_id if the ids correspond" if len(names) <= model_classes else ""
            raise ValueError(
                f"The dataset's class names do not match the model's: {len(missing)} of the dataset's {len(names)} "
                f"classes are not among the model's {model_classes} labels (e.g. {', '.join(map(repr, missing[:3]))}"
                f"; the model has e.g. {', '.join(map(repr, list(model_names)[:3]))}). Use the dataset the model was "
                f"trained on{by_id_hint}.{hint}"
            )
        lookup, target = [list(model_names).index(name) for name in names], model_names
        logger.info("Mapped the dataset's classes to the model's by name.")
    splits = DatasetDict({k: _relabel(v, data.label_column, lookup, target) for k, v in data.splits.items()})
    return dataclasses.replace(data, splits=splits)


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
