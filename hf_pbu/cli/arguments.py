"""Command-line arguments of `scripts/unlearn.py` besides `PBUConfig`: which model, which data, what to forget."""

from dataclasses import dataclass, field

from ..argument_checks import DATA_RULES, check_numbers


@dataclass
class ModelArguments:
    model_id: str = field(
        metadata={
            "help": "Image classifier to unlearn from: a Hub id of a timm or transformers model ('timm/<arch>' takes "
            "timm's default pretrained tag), timm's 'hf-hub:<repo>' or 'local-dir:<folder>', or a local folder."
        }
    )
    revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit of the model on the Hub."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads (model and data) are cached."})
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Load a transformers model built by its repository's own code (`auto_map` in its config.json), "
            "as transformers' example scripts do. Off by default. This runs that repository's Python code on this "
            "machine with your permissions: pass it only for code you have read and trust, at a pinned --revision."
        },
    )


@dataclass
class DataArguments:
    forget_class: list[str] = field(
        metadata={"help": "Class(es) to forget, by id or by name, e.g. `--forget_class 3 7` or `--forget_class cat`."}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A Hub dataset id, 'imagefolder' (with --dataset_dir) or a `save_to_disk` folder. Defaults to the "
            "dataset named in the model card's metadata."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration name of the Hub dataset."})
    dataset_dir: str | None = field(
        default=None,
        metadata={
            "help": "Local data: an imagefolder (train/ and test/, one sub-folder per class) or a saved dataset."
        },
    )
    forget_dir: str | None = field(
        default=None,
        metadata={
            "help": "Forget-only mode: a folder holding just images of the forget class(es), and no other data "
            "(one sub-folder per class when forgetting several). No retain accuracy or MIA can be measured."
        },
    )
    train_split: str = field(default="train", metadata={"help": "Split holding the training data."})
    eval_split: str | None = field(
        default=None,
        metadata={
            "help": "Split to measure A_Df/A_Dr and the attack's non-members on (labelled, not trained on). Default: "
            "'test', else 'validation'."
        },
    )
    eval_holdout_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Instead of an evaluation split, hold out this fraction of the training split (stratified, "
            "seeded); only meaningful if the model was not trained on those images. 0 (default): off."
        },
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: detected)."})
    label_column: str | None = field(
        default=None,
        metadata={
            "help": "Label column, one class per image (default: the first ClassLabel column, else 'label', 'labels', "
            "'fine_label', 'class' or 'target'). A column of lists (multi-label data) is refused."
        },
    )
    match_labels_by_id: bool = field(
        default=False,
        metadata={
            "help": "Take the dataset's class ids as the model's even when their names differ, or when the model's "
            "head has more outputs than the dataset has classes (a 1000-class head fine-tuned on a subset): dataset id "
            "i is output i."
        },
    )
    mia_samples: int = field(
        default=1000,
        metadata={"help": "Retained training images sampled as the members of the membership-inference attack."},
    )

    def __post_init__(self):
        check_numbers(self, DATA_RULES)  # before any work, like `PBUConfig`'s
