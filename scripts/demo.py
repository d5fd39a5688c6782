"""Offline demo: train a ResNet-18 on scikit-learn's digits (once), then forget one class with PBU.

    python scripts/demo.py [--forget_class 3] [--output_dir outputs/digits-unlearned] [any PBUConfig flag]
"""

import os
import sys
from dataclasses import dataclass, field

import timm
from timm.models import save_for_hf
from transformers import HfArgumentParser
from transformers.utils import logging

from hf_pbu import PBUConfig
from hf_pbu.data import class_names, digits_dataset, resolve_forget_classes, unlearning_splits, with_image_transform
from hf_pbu.demo import eval_transform, train_digits_model
from hf_pbu.pipeline import format_results_table, save_results, unlearn


@dataclass
class DemoArguments:
    forget_class: list[str] = field(default_factory=lambda: ["3"], metadata={"help": "Class id(s) or name(s) to forget."})
    base_model_dir: str = field(
        default="outputs/digits-resnet18", metadata={"help": "Where the digits classifier is trained and kept."}
    )


def main() -> None:
    logging.set_verbosity_info()
    parser = HfArgumentParser((DemoArguments, PBUConfig))
    if "--output_dir" not in sys.argv:
        sys.argv += ["--output_dir", "outputs/digits-unlearned"]
    demo_args, config = parser.parse_args_into_dataclasses()

    data = digits_dataset()
    names = class_names(data["train"])
    try:
        forget = resolve_forget_classes(demo_args.forget_class, names)
        raw_splits = unlearning_splits(data, forget)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    model = timm.create_model(f"local-dir:{train_digits_model(demo_args.base_model_dir)}", pretrained=True)
    transform = eval_transform(model)
    splits = {k: with_image_transform(v, transform) for k, v in raw_splits.items()}

    trainer, results = unlearn(model, config, splits, forget)
    if trainer.is_world_process_zero():
        save_for_hf(trainer.model.cpu(), config.output_dir, safe_serialization=True)
        path = save_results(results, config.output_dir)
        print(f"\nForgot {', '.join(names[c] for c in forget)} using {results['forget_train_samples']} forget images.")
        print(format_results_table(results))
        print(f"Unlearned model: timm.create_model('local-dir:{os.path.abspath(config.output_dir)}', pretrained=True)")
        print(f"Results: {path}")


if __name__ == "__main__":
    main()
