"""The default run on forget sets of a few dozen images to thousands: how many optimizer steps it takes, whether it
ends by its stop rule within the step budget (`PBUConfig.step_budget`), and whether it forgot.

    python benchmarks/small_forget_sets.py --dataset digits --forget_class 3 --sizes 20 40 146 --seeds 0 1 2
    python benchmarks/small_forget_sets.py --dataset fashion_mnist --forget_class 0 --sizes 20 40 150 6000

Each forget set is a seeded random sample of `size` training images of the class (all of them at the class's size),
so a run asks what a user with only those images asks. Any `PBUConfig` flag changes the run (the defaults
otherwise); `--probe_every N` also measures the whole forget set every N steps to report the first step at which it
was forgotten (at or below `stop_forget_accuracy`). The base models are `benchmarks/forget_losses.py`'s `MODEL_DIRS`.
A_Df is measured on all of the class's test images, A_Dr on the other classes' test images.
"""

import dataclasses
import time
from dataclasses import dataclass, field

import timm
import torch
from cells import offline_dataset, parse_study
from forget_losses import MODEL_DIRS
from transformers import TrainerCallback

from hf_pbu import PBUTrainer
from hf_pbu.data import unlearning_splits, with_image_transform
from hf_pbu.evidence.measurement import accuracy
from hf_pbu.models import eval_transform
from hf_pbu.sampling import seeded_indices


@dataclass
class SizeArguments:
    dataset: str = field(default="digits", metadata={"choices": list(MODEL_DIRS)})
    forget_class: int = field(default=3)
    sizes: list[int] = field(default_factory=lambda: [20, 40, 150], metadata={"help": "Forget-set sizes."})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Seeds (sample and run)."})
    base_model_dir: str | None = field(default=None, metadata={"help": "Default: forget_losses.py's MODEL_DIRS."})
    probe_every: int = field(default=0, metadata={"help": "Measure the whole forget set every N steps (0: off)."})


class FirstForgotten(TrainerCallback):
    """The first step (of those probed) at which the whole forget set is at or below `stop_forget_accuracy`."""

    def __init__(self, trainer: PBUTrainer, every: int):
        self.trainer, self.every, self.step = trainer, every, None

    def on_step_end(self, args, state, control, **kwargs):
        if self.step is None and state.global_step % self.every == 0:
            if self.trainer.forget_train_accuracy() <= args.stop_forget_accuracy:
                self.step = state.global_step


def main() -> None:
    torch.set_num_threads(1)
    args, config = parse_study(SizeArguments)
    data = offline_dataset(args.dataset)
    base_dir = args.base_model_dir or MODEL_DIRS[args.dataset]
    transform = eval_transform(timm.create_model(f"local-dir:{base_dir}", pretrained=True))
    splits = unlearning_splits(data, [args.forget_class])
    retain_test = with_image_transform(splits["retain_test"], transform)
    forget_test = with_image_transform(splits["forget_test"], transform)
    print(f"{args.dataset}, class {args.forget_class}, {base_dir}, forget_loss {config.forget_loss}, learning rate "
          f"{config.learning_rate:g}, max_steps {config.max_steps}\n")
    print("| forget images | seed | step budget | steps | ended by | first forgotten (probed) | forget-train % "
          "| A_Df % | A_Dr % | forgotten | seconds |")
    print("|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|")
    for size in args.sizes:
        for seed in args.seeds:
            forget_all = splits["forget_train"]
            forget = forget_all.select(seeded_indices(len(forget_all), min(size, len(forget_all)), seed))
            model = timm.create_model(f"local-dir:{base_dir}", pretrained=True).eval()
            run_config = dataclasses.replace(config, seed=seed)
            trainer = PBUTrainer(model=model, args=run_config, train_dataset=with_image_transform(forget, transform))
            probe = FirstForgotten(trainer, args.probe_every) if args.probe_every else None
            if probe:
                trainer.add_callback(probe)
            start = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - start
            results = trainer.unlearning_results
            forget_train = trainer.forget_train_accuracy()
            ended = ("stop rule" if results.stopped_at_step is not None else "budget")
            print(f"| {len(forget)} | {seed} | {trainer.args.max_steps} | {results.steps} | {ended} | "
                  f"{probe.step if probe and probe.step is not None else '-'} | {forget_train:.1f} | "
                  f"{accuracy(model, forget_test, 256):.1f} | {accuracy(model, retain_test, 256):.1f} | "
                  f"{'yes' if results.forgotten else 'no'} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
