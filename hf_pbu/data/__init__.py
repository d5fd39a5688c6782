"""What a run reads: images decoded as `datasets` decodes them (`images`), a dataset's splits and columns (`loading`),
its labels in the model's id space (`labels`), and the forget and retained splits of a run (`splits`)."""

from .images import open_image
from .labels import align_labels, resolve_forget_classes
from .loading import ImageData, class_names, load_image_dataset
from .splits import (
    UnlearningData,
    dataset_labels,
    forget_folder_dataset,
    load_unlearning_splits,
    split_by_classes,
    unlearning_splits,
    with_image_transform,
)

__all__ = [
    "ImageData", "UnlearningData", "align_labels", "class_names", "dataset_labels", "forget_folder_dataset",
    "load_image_dataset", "load_unlearning_splits", "open_image", "resolve_forget_classes", "split_by_classes",
    "unlearning_splits", "with_image_transform",
]
