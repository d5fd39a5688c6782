"""PBU step by step on a benchmark model: the stop check's forget-train accuracy, the retained classes' test
accuracy (on a sample) and the forget CE, every `--every` steps, to see what each step of unlearning costs.

    python benchmarks/pbu_dynamics.py --dataset fashion_mnist --forget_class 8 --seed 1 [any PBUConfig flag]

The base model is the one `benchmarks/compare_methods.py` trained and cached (run it first). The Fisher is cached under
`--fisher_cache_dir` (default: the library's cache), so repeated runs on one class only pay it once.
"""

from dataclasses import dataclass, field

import timm
import torch
from cells import cell_splits, offline_dataset, parse_study
from forget_losses import MODEL_DIRS
from transformers import TrainerCallback

from hf_pbu import PBUTrainer
from hf_pbu.evidence.measurement import accuracy
from hf_pbu.models import eval_transform


@dataclass
class DynamicsArguments:
    dataset: str = field(default="fashion_mnist", metadata={"choices": list(MODEL_DIRS)})
    forget_class: int = field(default=8)
    base_model_dir: str | None = field(default=None, metadata={"help": "Default: benchmarks/compare_methods.py's."})
    every: int = field(default=5, metadata={"help": "Report every this many steps (and at the end)."})
    retain_sample_every: int = field(default=9, metadata={"help": "Retained test images used: every n-th one."})


class Probe(TrainerCallback):
    def __init__(self, trainer: PBUTrainer, retain_sample: list, every: int):
        self.trainer, self.retain_sample, self.every = trainer, retain_sample, every

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every and not control.should_training_stop:
            return
        forget = self.trainer.forget_train_accuracy()
        ce = self.trainer._metrics["forget_ce"][-1]
        retain = accuracy(model, self.retain_sample, 256)
        print(f"| {state.global_step} | {forget:.1f} | {retain:.1f} | {ce:.2f} |", flush=True)


def main() -> None:
    torch.set_num_threads(1)
    args, config = parse_study(DynamicsArguments)
    data = offline_dataset(args.dataset)
    model = timm.create_model(f"local-dir:{args.base_model_dir or MODEL_DIRS[args.dataset]}", pretrained=True).eval()
    splits = cell_splits(data, eval_transform(model), args.forget_class, mia_members=0)
    retain_test = splits["retain_test"]
    retain_sample = [retain_test[i] for i in range(0, len(retain_test), args.retain_sample_every)]
    trainer = PBUTrainer(model=model, args=config, train_dataset=splits["forget_train"])
    trainer.add_callback(Probe(trainer, retain_sample, args.every))
    print("| step | forget-train acc. (whole set, %) | retained test acc. (sample, %) | forget CE (batch) |")
    print("|---|---|---|---|")
    trainer.train()
    model.eval()
    print(f"\nfinal: A_Df {accuracy(model, splits['forget_test'], 256):.1f}%, "
          f"A_Dr {accuracy(model, retain_test, 256):.1f}%, {trainer.state.global_step} steps")


if __name__ == "__main__":
    main()
