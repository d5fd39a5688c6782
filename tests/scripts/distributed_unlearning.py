"""Run by `accelerate launch --multi_gpu --num_processes 2`: PBUTrainer under DDP (gloo on CPU).

Writes (rank 0) a JSON of what the test checks to the path given as argv[1]; argv[2] is the output folder.
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import DictDataset, TinyConvNet, random_images, trained_bn_stats

from hf_pbu import PBUConfig, PBUTrainer

IMAGES = 15  # odd: the last batches are padded with duplicates, which the whole-set check must not count


def fixture() -> tuple[TinyConvNet, DictDataset]:
    """A model that predicts class 1 on every image; one image labelled 1, the others 2: 1/15 correct."""
    torch.manual_seed(0)
    images = random_images(IMAGES)
    model = trained_bn_stats(TinyConvNet(3), images)
    with torch.no_grad():
        model.head.bias[1] += 5.0
    labels = torch.full((IMAGES,), 2)
    labels[0] = 1
    return model, DictDataset(images, labels)


def config(output_dir: str, **overrides) -> PBUConfig:
    values = dict(output_dir=output_dir, fisher_cache_dir="none", report_to="none", disable_tqdm=True, use_cpu=True,
                  per_device_train_batch_size=2, fisher_batch_size=4, learning_rate=1e-12, num_train_epochs=2,
                  min_step_budget=0, forget_level="output")
    return PBUConfig(**{**values, **overrides})


if __name__ == "__main__":
    out, output_dir = sys.argv[1], sys.argv[2]
    model, forget = fixture()
    # No stop: the budget runs out, at the one-process count, and checkpoints are saved within it.
    budget_run = PBUTrainer(model=model, args=config(output_dir, stop_forget_accuracy=-1), train_dataset=forget)
    budget_run.train()
    # Stop at 10%: a step's training batches (4 images over both processes) read 0% or 25%, and those at 0% trigger
    # the check; the whole set reads 1/15.
    model, forget = fixture()
    stop_run = PBUTrainer(model=model, args=config(output_dir + "-stop", save_strategy="no", stop_forget_accuracy=10),
                          train_dataset=forget)
    stop_run.train()
    whole_set_accuracy = budget_run.forget_train_accuracy()  # a collective: every process runs it
    # forget_level "head": the forget rows, outside DDP's wrapper, get their gradients all-reduced, so both
    # processes refit the same rows, until the classes rank last on the whole set.
    model, forget = fixture()
    head_run = PBUTrainer(model=model, args=config(output_dir + "-head", save_strategy="no", forget_level="head",
                                                   learning_rate=1e-3, forget_row_learning_rate=3e-2,
                                                   num_train_epochs=20), train_dataset=forget)
    head_run.train()
    heads = head_run.accelerator.gather(head_run.model.head.weight.detach().reshape(1, -1))
    if budget_run.is_world_process_zero():
        Path(out).write_text(json.dumps({
            "world_size": budget_run.args.world_size,
            "budget": budget_run.args.step_budget(IMAGES),
            "budget_steps": budget_run.state.global_step,
            "whole_set_accuracy": whole_set_accuracy,
            "stopped_at_step": stop_run.stop_state.stopped_at_step,
            "confirmations": stop_run.stop_state.forget_train_accuracy_history,
            "head_stop_rule": head_run.stop_rule,
            "head_stopped_at_step": head_run.stop_state.stopped_at_step,
            "heads_equal": torch.equal(heads[0], heads[1]),
            "head_rows_moved": (heads[0].reshape(3, -1)[1:] - fixture()[0].head.weight[1:]).norm().item(),
        }))
    budget_run.accelerator.wait_for_everyone()
    budget_run.accelerator.end_training()  # the process group ends before the processes do
