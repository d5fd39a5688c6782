"""Run by `accelerate launch --multi_gpu --num_processes N`: the Fisher of each rank's shard, all-reduced.

Writes the result (rank 0) to the safetensors path given as argv[1].
"""

import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import DictDataset, TinyConvNet, random_images, trained_bn_stats

from hf_pbu import compute_fisher_diagonal
from hf_pbu.distributed import shard


def fixture(n: int = 7):
    """An odd number of images, so that a padded sampler would count one twice."""
    torch.manual_seed(0)
    images = random_images(n)
    model = trained_bn_stats(TinyConvNet(4), images)
    return model, DictDataset(images, torch.arange(n) % 4)


if __name__ == "__main__":
    accelerator = Accelerator(cpu=True)
    model, dataset = fixture()
    fisher = compute_fisher_diagonal(model, DataLoader(shard(dataset), batch_size=2), show_progress=False)
    if accelerator.is_main_process:
        save_file({n: t.contiguous() for n, t in fisher.items()}, sys.argv[1])
    accelerator.wait_for_everyone()
    accelerator.end_training()
