"""Run by `accelerate launch --multi_gpu --num_processes N`: `hf_pbu.evidence.measurement.measure` with the launch's
accelerator, on splits of odd sizes (so that the padded last shards hold duplicates that must not count).

Writes the result (main process) as JSON to the path given as argv[1].
"""

import dataclasses
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import DictDataset, TinyConvNet, random_images, trained_bn_stats

from hf_pbu.evidence.measurement import measure


def fixture() -> tuple[nn.Module, dict]:
    """A tiny model and the four measured splits, each of an odd size."""
    torch.manual_seed(0)
    model = trained_bn_stats(TinyConvNet(4), random_images(8))
    sizes = {"forget_train": 7, "forget_test": 5, "retain_test": 11, "retain_train": 9}
    splits = {name: DictDataset(random_images(n, seed=i + 1), torch.arange(n) % 4)
              for i, (name, n) in enumerate(sizes.items())}
    return model, splits


if __name__ == "__main__":
    accelerator = Accelerator(cpu=True)
    model, splits = fixture()
    results = measure(model.to(accelerator.device), splits, batch_size=2, accelerator=accelerator)
    if accelerator.is_main_process:
        Path(sys.argv[1]).write_text(json.dumps(dataclasses.asdict(results)))
    accelerator.wait_for_everyone()
    accelerator.end_training()
