"""Offline demo, step 1: scikit-learn's real handwritten digits as a dataset folder, and a timm ResNet-18 trained
on them and saved in timm's Hub layout (both kept under outputs/ and reused). Step 2 is the main job itself:

    python scripts/unlearn.py --model_id outputs/digits-resnet18 --dataset_name outputs/digits \\
        --forget_class digit_3 --output_dir outputs/digits-unlearned
"""

from dataclasses import dataclass, field

from base_models import train_digits_model
from offline_data import save_digits_dataset
from transformers import HfArgumentParser
from transformers.utils import logging


@dataclass
class DemoArguments:
    dataset_dir: str = field(default="outputs/digits", metadata={"help": "Where the digits dataset is saved."})
    model_dir: str = field(default="outputs/digits-resnet18", metadata={"help": "Where the classifier is saved."})


def main() -> None:
    logging.set_verbosity_warning()
    (args,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses()
    print(f"Digits dataset: {save_digits_dataset(args.dataset_dir)}")
    print(f"Digits classifier (timm layout): {train_digits_model(args.model_dir)}")


if __name__ == "__main__":
    main()
