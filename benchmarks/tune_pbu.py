"""PBU's default hyperparameters, measured: A_Df / A_Dr after unlearning on the digits demo model for a grid of
settings and forget classes (the stop criterion ends every run).

    python benchmarks/tune_pbu.py --learning_rate 1e-4 5e-5 --forget_class 2 3 6 8
"""

import itertools
import tempfile
from dataclasses import dataclass, field

import timm
from base_models import train_digits_model
from offline_data import digits_dataset
from transformers import HfArgumentParser
from transformers.utils import logging

from hf_pbu import PBUConfig
from hf_pbu.data import unlearning_splits, with_image_transform
from hf_pbu.models import eval_transform
from hf_pbu.unlearning import unlearn


@dataclass
class TuneArguments:
    learning_rate: list[float] = field(default_factory=lambda: [1e-4, 5e-5], metadata={"help": "Adam learning rates."})
    forget_class: list[int] = field(default_factory=lambda: [2, 3, 6, 8], metadata={"help": "Classes to forget."})
    model_dir: str = field(default="outputs/digits-resnet18", metadata={"help": "The digits classifier."})


def main() -> None:
    logging.set_verbosity_error()
    (args,) = HfArgumentParser(TuneArguments).parse_args_into_dataclasses()
    data = digits_dataset()
    print("| lr | class | A_Df before | A_Df after | A_Dr before | A_Dr after | A_Dr drop | steps |")
    print("|---|---|---|---|---|---|---|---|")
    for lr, forget in itertools.product(args.learning_rate, args.forget_class):
        model = timm.create_model(f"local-dir:{train_digits_model(args.model_dir)}", pretrained=True)
        transform = eval_transform(model)
        splits = {k: with_image_transform(v, transform) for k, v in unlearning_splits(data, [forget]).items()}
        config = PBUConfig(output_dir=tempfile.mkdtemp(), learning_rate=lr, save_strategy="no", disable_tqdm=True)
        _, r = unlearn(model, config, splits, [forget])
        before, after = r.before, r.after
        print(f"| {lr:g} | {forget} | {before.forget_test_accuracy:.1f} | {after.forget_test_accuracy:.1f} | "
              f"{before.retain_test_accuracy:.2f} | {after.retain_test_accuracy:.2f} | "
              f"{before.retain_test_accuracy - after.retain_test_accuracy:.2f} | {r.steps} |", flush=True)


if __name__ == "__main__":
    main()
