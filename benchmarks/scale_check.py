"""The headline command at real scale, rehearsed: a classifier at 224x224 on a `datasets` folder with only `train`
and `validation` splits (as Food-101), unlearned by `scripts/unlearn.py` under `accelerate launch`.

    python benchmarks/scale_check.py --model timm:convnext_atto                 # CPU rehearsal (issue 10, item 8)
    python benchmarks/scale_check.py --model transformers:convnext --model transformers:vit
    python benchmarks/scale_check.py --model timm:convnext_large --mixed_precision bf16   # the GPU check (item 9)

No network: the model is built from its architecture (random init), then taught the benchmark's synthetic classes
(each class a hue, with noise and a random box, at 256x256 so that the eval transform resizes and crops) for a few
steps, just enough for it to recognise them: the run measures time and memory at the user's scale, not accuracy.
It prints, per model, the Fisher's time and peak accelerator memory, the time of an unlearning step, the stop
check's share of the unlearning time, the end-to-end time of the command and the before/after accuracies, as a
markdown table (append it to benchmarks/RESULTS.md with the command line, which it prints too).
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import timm
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage
from timm.models import save_for_hf
from torch import nn
from transformers import HfArgumentParser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "unlearn.py")
IMAGE_SIDE = 256
PRETRAINED_CFG = {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bicubic",
                  "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


@dataclass
class ScaleArguments:
    model: list[str] = field(
        default_factory=lambda: ["timm:convnext_atto"],
        metadata={"help": "Models as family:arch: timm:<timm architecture>, transformers:convnext or transformers:vit "
                  "(small configs of ConvNeXt and ViT)."},
    )
    num_classes: int = field(default=10, metadata={"help": "Classes of the synthetic dataset."})
    train_per_class: int = field(default=64, metadata={"help": "Training images per class (the forget set's size)."})
    validation_per_class: int = field(default=16, metadata={"help": "Validation images per class."})
    forget_class: int = field(default=3, metadata={"help": "Class to forget."})
    mixed_precision: str = field(default="no", metadata={"help": "accelerate's --mixed_precision: no, bf16, fp16."})
    num_processes: int = field(default=1, metadata={"help": "Processes for accelerate launch."})
    work_dir: str = field(default="outputs/scale_check", metadata={"help": "Where data, models and runs go."})
    unlearn_args: str = field(
        default="--fisher_batch_size 64 --per_device_train_batch_size 64 --report_to none --disable_tqdm true",
        metadata={"help": "Extra arguments of scripts/unlearn.py."},
    )


def synthetic_dataset(num_classes: int, train_per_class: int, validation_per_class: int, seed: int = 0) -> DatasetDict:
    """Train and validation splits (no test split, as Food-101) of class-coloured noisy 256x256 images."""
    rng = np.random.default_rng(seed)
    features = Features({"image": Image(), "label": ClassLabel(names=[f"class_{c}" for c in range(num_classes)])})

    def image(label: int) -> PILImage.Image:
        hue = np.array(PILImage.new("HSV", (1, 1), (int(255 * label / num_classes), 200, 200)).convert("RGB"))[0, 0]
        pixels = hue + rng.normal(0, 40, (IMAGE_SIDE, IMAGE_SIDE, 3))
        top, left = rng.integers(0, IMAGE_SIDE // 2, 2)
        pixels[top : top + IMAGE_SIDE // 3, left : left + IMAGE_SIDE // 3] = rng.integers(0, 256, 3)
        return PILImage.fromarray(pixels.clip(0, 255).astype(np.uint8))

    def split(per_class: int) -> Dataset:
        labels = [c for c in range(num_classes) for _ in range(per_class)]
        return Dataset.from_dict({"image": [image(c) for c in labels], "label": labels}, features=features)

    return DatasetDict(train=split(train_per_class), validation=split(validation_per_class))


def build_model(spec: str, names: list[str]) -> tuple[nn.Module, str, object]:
    """(model, family, image processor or None) of `spec`, random init, with `names` as its classes."""
    family, _, arch = spec.partition(":")
    if family == "timm":
        model = timm.create_model(arch, pretrained=False, num_classes=len(names), pretrained_cfg_overlay=PRETRAINED_CFG)
        return model, family, None
    from transformers import (
        ConvNextConfig,
        ConvNextForImageClassification,
        ConvNextImageProcessor,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    labels = {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}
    if arch == "convnext":  # ConvNeXt-atto's widths and depths
        config = ConvNextConfig(depths=[2, 2, 6, 2], hidden_sizes=[40, 80, 160, 320], **labels)
        return ConvNextForImageClassification(config), family, ConvNextImageProcessor()
    if arch == "vit":  # ViT-Ti/16
        config = ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
                           image_size=224, patch_size=16, **labels)
        return ViTForImageClassification(config), family, ViTImageProcessor()
    raise ValueError(f"Unknown model {spec!r}: use timm:<arch>, transformers:convnext or transformers:vit.")


def head_of(model: nn.Module) -> nn.Linear:
    """The classification head: timm's `get_classifier()`, transformers' `classifier`."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else model.classifier
    if not isinstance(head, nn.Linear):
        raise ValueError(f"Expected a linear head, got {type(head).__name__}.")
    return head


@torch.no_grad()
def head_inputs(model: nn.Module, data: Dataset, transform, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The features that enter the head, for every image of `data` (one forward pass, no gradients)."""
    captured = []
    hook = head_of(model).register_forward_pre_hook(lambda module, args: captured.append(args[0].float()))
    model.to(device).eval()
    try:
        for start in range(0, len(data), 64):
            batch = data[start : start + 64]["image"]
            images = torch.stack([transform(image.convert("RGB")) for image in batch]).to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                model(images)
    finally:
        hook.remove()
    return torch.cat(captured)


def teach(model: nn.Module, data: Dataset, transform, device: torch.device, dtype: torch.dtype) -> float:
    """Fit the head on the (random) backbone's features until the model recognises the classes: one forward pass
    over the training split, then Adam on a head over standardised features, folded into the model's own head.
    Returns the training accuracy (percent)."""
    raw = head_inputs(model, data, transform, device, dtype)
    mean, std = raw.mean(0), raw.std(0).clamp_min(1e-6)
    features = (raw - mean) / std
    labels = torch.tensor(data["label"], device=device)
    probe = nn.Linear(features.shape[1], int(labels.max()) + 1).to(device)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(300):
        loss = nn.functional.cross_entropy(probe(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        head = head_of(model)
        head.weight.copy_(probe.weight / std)
        head.bias.copy_(probe.bias - (probe.weight / std) @ mean)
        return 100.0 * (probe(features).argmax(-1) == labels).float().mean().item()


def save(model: nn.Module, family: str, processor, names: list[str], folder: str) -> None:
    model.cpu().eval()
    if family == "timm":
        save_for_hf(model, folder, model_config={"label_names": names}, safe_serialization=True)
    else:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)


def transform_of(model: nn.Module, family: str, processor):
    if family == "timm":
        return timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False)
    from hf_pbu.models import processor_transform

    return processor_transform(processor)


def unlearn_command(args: ScaleArguments, model_dir: str, data_dir: str, output_dir: str) -> list[str]:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--num_processes",
              str(args.num_processes), "--mixed_precision", args.mixed_precision, "--dynamo_backend", "no"]
    if args.num_processes > 1:
        launch.append("--multi_gpu")
    return [*launch, SCRIPT, "--model_id", model_dir, "--dataset_name", data_dir, "--forget_class",
            str(args.forget_class), "--output_dir", output_dir,
            *precision_flags(args.mixed_precision), *shlex.split(args.unlearn_args)]


def precision_flags(mixed_precision: str) -> list[str]:
    """`TrainingArguments`' own flag for the launcher's precision, so the Trainer's Accelerator uses it too."""
    return {"bf16": ["--bf16", "true"], "fp16": ["--fp16", "true"]}.get(mixed_precision, [])


def run_one(args: ScaleArguments, spec: str, data: DatasetDict, data_dir: str) -> dict:
    names = data["train"].features["label"].names
    model, family, processor = build_model(spec, names)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision, torch.float32)
    start = time.perf_counter()
    taught = teach(model, data["train"], transform_of(model, family, processor), device, dtype)
    print(f"{spec}: taught to {taught:.0f}% train accuracy in {time.perf_counter() - start:.0f} s", flush=True)
    name = spec.replace(":", "-")
    model_dir, output_dir = (os.path.join(args.work_dir, f"{name}-{kind}") for kind in ("model", "unlearned"))
    save(model, family, processor, names, model_dir)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    shutil.rmtree(output_dir, ignore_errors=True)  # a fresh run, not a resumed one
    command = unlearn_command(args, model_dir, data_dir, output_dir)
    print(shlex.join(command), flush=True)
    start = time.perf_counter()
    run = subprocess.run(command, cwd=ROOT, text=True, capture_output=True)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        print(run.stdout[-3000:], run.stderr[-6000:], sep="\n", flush=True)
        raise SystemExit(f"{spec}: scripts/unlearn.py failed ({run.returncode})")
    print(run.stdout[-2500:], flush=True)
    with open(os.path.join(output_dir, "unlearning_results.json")) as f:
        results = json.load(f)
    return {"model": spec, "parameters": parameters, "end_to_end_seconds": seconds, "results": results}


def row(record: dict) -> str:
    results = record["results"]
    steps = max(results.get("steps") or 0, 1)
    unlearn = results.get("unlearn_seconds") or float("nan")
    stop = results["stop_check_seconds"]

    def pct(key, when):
        value = (results.get(when) or {}).get(key)
        return "n/a" if value is None else f"{value:.1f}"

    def gib(value):
        return "n/a" if value is None else f"{value / 2**30:.2f}"

    return (
        f"| {record['model']} | {record['parameters'] / 1e6:.1f}M | {results.get('fisher_seconds', 0):.1f} | "
        f"{gib(results['fisher_peak_memory_bytes'])} | {gib(results['fisher_memory_budget_bytes'])} | "
        f"{(unlearn - stop) / steps:.2f} | {100 * stop / unlearn:.1f}% | {results.get('steps')} | "
        f"{record['end_to_end_seconds']:.0f} | {pct('forget_test_accuracy', 'before')} -> "
        f"{pct('forget_test_accuracy', 'after')} | {pct('retain_test_accuracy', 'before')} -> "
        f"{pct('retain_test_accuracy', 'after')} |"
    )


HEADER = (
    "| model | params | Fisher (s) | Fisher peak (GiB) | budget (GiB) | step (s) | stop-check share | steps | "
    "end to end (s) | A_Df % | A_Dr % |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
)


def main() -> None:
    (args,) = HfArgumentParser(ScaleArguments).parse_args_into_dataclasses()
    os.makedirs(args.work_dir, exist_ok=True)
    data = synthetic_dataset(args.num_classes, args.train_per_class, args.validation_per_class)
    data_dir = os.path.join(args.work_dir, "data")
    data.save_to_disk(data_dir)
    records = [run_one(args, spec, data, data_dir) for spec in args.model]
    with open(os.path.join(args.work_dir, "scale_check.json"), "w") as f:
        json.dump(records, f, indent=2)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"\n`python benchmarks/scale_check.py {shlex.join(sys.argv[1:])}` on {device}:\n")
    print(HEADER)
    print("\n".join(row(record) for record in records))


if __name__ == "__main__":
    main()
