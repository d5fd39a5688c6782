"""Class ids: the forget classes a user names, and a dataset's labels put in the model's own id space."""

import dataclasses
from collections.abc import Sequence

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict
from transformers.utils import logging

from ..models import generic_label_names
from .loading import ImageData, class_names

logger = logging.get_logger(__name__)


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
