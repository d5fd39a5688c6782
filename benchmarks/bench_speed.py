"""Speed of PBU on the digits ResNet-18, side by side (issue 6): our exact Fisher vs nngeometry's, mc vs exact,
a PBU step vs a plain cross-entropy step, PBU end to end vs retraining from scratch, and peak memory of each.

    python benchmarks/bench_speed.py [--threads 1] [--forget_class 3] [--base_model_dir outputs/digits-resnet18]

Each measurement runs in a fresh subprocess (its peak RSS is its own) with the same thread count; the summary is
printed as markdown. Needs the `bench` extra (nngeometry). Timings are wall seconds and process CPU seconds: on a
shared machine the CPU seconds are the steadier figure.
"""

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import torch

from hf_pbu import PBUConfig

# ----------------------------------------------------------------------------------------------------------------
# Measurements (each runs in its own process: `--part NAME`)
# ----------------------------------------------------------------------------------------------------------------


def digits_setup(args):
    import timm
    from base_models import train_digits_model
    from offline_data import digits_dataset

    from hf_pbu.data import split_by_classes, unlearning_splits, with_image_transform
    from hf_pbu.models import eval_transform

    model = timm.create_model(f"local-dir:{train_digits_model(args.base_model_dir)}", pretrained=True)
    data = digits_dataset()
    transform = eval_transform(model)
    splits = {k: with_image_transform(v, transform) for k, v in unlearning_splits(data, [args.forget_class]).items()}
    retain_train = with_image_transform(split_by_classes(data["train"], [args.forget_class])[1], transform)
    return model, splits, retain_train


def forget_loader(splits, batch_size):
    from torch.utils.data import DataLoader

    def collate(rows):
        return torch.stack([r["pixel_values"] for r in rows]), torch.tensor([r["labels"] for r in rows])

    return DataLoader(splits["forget_train"], batch_size=batch_size, collate_fn=collate)


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def flat_fisher(fisher: dict) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in fisher.values()])


def part_fisher(args, estimator: str):
    from hf_pbu.objective.fisher import compute_fisher_diagonal

    model, splits, _ = digits_setup(args)
    loader = forget_loader(splits, args.fisher_batch_size)
    fisher, times = timed(lambda: compute_fisher_diagonal(model, loader, estimator, show_progress=False))
    torch.save(flat_fisher(fisher), os.path.join(args.work_dir, f"fisher_{estimator}.pt"))
    return {**times, "images": len(splits["forget_train"]), "parameters": sum(p.numel() for p in model.parameters())}


def part_nngeometry(args, sort_logits: bool, images: int | None = None):
    """nngeometry's FIM(..., PMatDiag, variant="classif_logits"), as the reference code calls it. With
    `sort_logits` it gets the logits in increasing order (the Fisher does not depend on the class order): its
    Cholesky factor divides by 1 - cumsum(p) in float32, which is <= 0 on confident images and gives NaN."""
    from nngeometry.metrics import FIM
    from nngeometry.object import PMatDiag
    from torch.utils.data import Subset

    model, splits, _ = digits_setup(args)
    if images is not None:
        splits = {**splits, "forget_train": Subset(splits["forget_train"], range(images))}
    model.eval()
    function = (lambda x, *_: model(x).sort(-1).values) if sort_logits else None
    loader = forget_loader(splits, args.fisher_batch_size)
    diagonal, times = timed(
        lambda: FIM(model, loader, PMatDiag, variant="classif_logits", function=function).get_diag()
    )
    diagonal = diagonal.double()
    if sort_logits:
        torch.save(diagonal, os.path.join(args.work_dir, "fisher_nngeometry.pt"))
    return {**times, "images": len(splits["forget_train"]), "nan_fraction": torch.isnan(diagonal).float().mean().item()}


def _step_setup(args, image_size: int | None = None):
    """A CE step, a PBU step and a PBU step with the penalty through autograd, on one forget batch (upsampled to
    `image_size` if given: the penalty's cost is fixed, the step's grows with the image)."""
    import torch.nn.functional as F

    from hf_pbu import PBUConfig, PBUTrainer
    from hf_pbu.models import classifier_logits

    model, splits, _ = digits_setup(args)
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    config = PBUConfig(output_dir=os.path.join(args.work_dir, "step"), report_to="none", use_cpu=True,
                       fisher_cache_dir="none", disable_tqdm=True)
    trainer = PBUTrainer(model=model, args=config, train_dataset=splits["forget_train"], fisher=fisher)
    images, labels = next(iter(forget_loader(splits, config.per_device_train_batch_size)))
    if image_size is not None:
        images = F.interpolate(images, size=image_size, mode="bilinear")
    inputs = {"pixel_values": images, "labels": labels}
    model.train()
    trainer.compute_loss(model, inputs)  # freezes the norm layers as PBU does: both steps then run the same modes
    with torch.no_grad():  # away from theta*, as during unlearning
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    named = [(n, p) for n, p in model.named_parameters() if n in trainer.penalty.anchors()]
    anchors, weights = trainer.penalty.anchors(), trainer.penalty.weights()

    def ce_step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(classifier_logits(model, inputs["pixel_values"]).float(), inputs["labels"]).backward()

    def pbu_step():
        """What `PBUTrainer.training_step` runs: the loss's backward, then the penalty's gradient in place."""
        model.zero_grad(set_to_none=True)
        trainer.compute_loss(model, inputs).backward()
        trainer.penalty.add_gradient_(model)

    def autograd_penalty_step():
        """The penalty's value in the loss and its gradient through autograd, for comparison."""
        model.zero_grad(set_to_none=True)
        loss = trainer.compute_loss(model, inputs)
        (loss + sum((weights[n] * (p - anchors[n]) ** 2).sum() for n, p in named)).backward()

    optimizer = trainer.create_optimizer()  # PBUConfig's (AdamW, learning rate 5e-5), the same for both

    def with_update(step):
        def train_step():
            step()
            optimizer.step()

        return train_step

    return {
        "ce": ce_step,
        "pbu": pbu_step,
        "pbu_autograd_penalty": autograd_penalty_step,
        "ce_with_update": with_update(ce_step),
        "pbu_with_update": with_update(pbu_step),
    }, len(labels)


def part_steps(args, image_size: int | None = None, repeats: int | None = None):
    """The step variants, interleaved, `repeats` (default `--steps`) times each after one warm-up: medians."""
    steps, batch = _step_setup(args, image_size)
    repeats = repeats or args.steps
    samples = {name: {"wall_s": [], "cpu_s": []} for name in steps}
    for repeat in range(repeats + 1):
        for name, step in steps.items():
            _, times = timed(step)
            if repeat:
                for key, value in times.items():
                    samples[name][key].append(value)
    median = {name: {k: sorted(v)[len(v) // 2] for k, v in s.items()} for name, s in samples.items()}
    return {"batch": batch, "steps": repeats, "image_size": image_size or 32, **median}


def part_one_step_kind(args, name: str):
    """Peak memory of one kind of step alone."""
    steps, _ = _step_setup(args)
    for _ in range(3):
        steps[name]()
    return {}


def part_pbu_end_to_end(args, estimator: str):
    from hf_pbu import PBUConfig
    from hf_pbu.unlearning import unlearn

    model, splits, _ = digits_setup(args)
    config = PBUConfig(output_dir=os.path.join(args.work_dir, "pbu"), report_to="none", use_cpu=True,
                       fisher_cache_dir="none", disable_tqdm=True, save_strategy="no", seed=0,
                       fisher_estimator=estimator)
    (_, results), times = timed(lambda: unlearn(model, config, splits, [args.forget_class]))
    return {**times, "fisher_s": results.fisher_seconds, "unlearn_s": results.unlearn_seconds,
            "steps": results.steps, "after": dataclasses.asdict(results.after),
            "before": dataclasses.asdict(results.before)}


def part_retrain(args):
    import timm
    from base_models import DIGITS_ARCH, SMALL_IMAGE_PRETRAINED_CFG, training_recipe
    from classifier_training import ClassifierTrainer

    from hf_pbu.evidence.measurement import accuracy

    base, splits, retain_train = digits_setup(args)
    torch.manual_seed(0)
    model = timm.create_model(DIGITS_ARCH, pretrained=False, num_classes=base.num_classes,
                              pretrained_cfg_overlay=SMALL_IMAGE_PRETRAINED_CFG)
    recipe = training_recipe(os.path.join(args.work_dir, "retrain"), seed=0)
    recipe.use_cpu, recipe.disable_tqdm = True, True
    output, times = timed(lambda: ClassifierTrainer(model=model, args=recipe, train_dataset=retain_train).train())
    return {**times, "train_runtime_s": output.metrics["train_runtime"], "retain_train_images": len(retain_train),
            "forget_test_accuracy": accuracy(model, splits["forget_test"], 64),
            "retain_test_accuracy": accuracy(model, splits["retain_test"], 64)}


PARTS = {
    "setup_only": lambda a: digits_setup(a) and {},
    "fisher_exact": lambda a: part_fisher(a, "exact"),
    "fisher_mc": lambda a: part_fisher(a, "mc"),
    "fisher_nngeometry": lambda a: part_nngeometry(a, sort_logits=True),
    "nngeometry_as_called_by_reference": lambda a: part_nngeometry(a, sort_logits=False, images=16),
    "steps": part_steps,
    "steps_224": lambda a: part_steps(a, image_size=224, repeats=5),
    "memory_ce_step": lambda a: part_one_step_kind(a, "ce"),
    "memory_pbu_step": lambda a: part_one_step_kind(a, "pbu"),
    "pbu_end_to_end": lambda a: part_pbu_end_to_end(a, "exact"),
    "pbu_end_to_end_mc": lambda a: part_pbu_end_to_end(a, "mc"),
    "retrain": part_retrain,
}

# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------


def run_part(name: str, args) -> dict:
    command = [sys.executable, __file__, "--part", name, "--threads", str(args.threads), "--work_dir", args.work_dir,
               "--forget_class", str(args.forget_class), "--base_model_dir", args.base_model_dir,
               "--fisher_batch_size", str(args.fisher_batch_size), "--steps", str(args.steps)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"part {name} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"[bench] {name}: {result}", file=sys.stderr, flush=True)
    return result


def relative_errors(result: torch.Tensor, reference: torch.Tensor) -> dict:
    return {
        "max_abs_over_max": ((result - reference).abs().max() / reference.abs().max()).item(),
        "l2": ((result - reference).norm() / reference.norm()).item(),
    }


def machine() -> str:
    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                   platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {platform.python_version()}"


def overhead(steps: dict, name: str, clock: str, reference: str = "ce") -> str:
    return f"{100 * (steps[name][clock] / steps[reference][clock] - 1):+.1f}%"


def step_rows(steps: dict, mib: dict | None) -> list[str]:
    size, where = steps["image_size"], f"batch {steps['batch']}, {steps['image_size']}x{steps['image_size']}"
    rows = [
        ("ce", f"Plain CE step (forward + backward, {where})", "memory_ce_step"),
        ("pbu", f"PBU step (`compute_loss` + backward + `penalty.add_gradient_`, {size}x{size})", "memory_pbu_step"),
        ("pbu_autograd_penalty", f"PBU step with the penalty through autograd ({size}x{size})", None),
        ("ce_with_update", f"Plain CE training step: the above + optimizer update ({size}x{size})", None),
        ("pbu_with_update", f"PBU training step: the above + optimizer update ({size}x{size})", None),
    ]
    return [
        f"| {label} | {steps[name]['wall_s']:.3f} | {steps[name]['cpu_s']:.3f} | "
        f"{f'{mib[key]:.0f}' if mib and key else ''} | median of {steps['steps']} |"
        for name, label, key in rows
    ]


def summary(results: dict, args, load_before, load_after) -> str:
    exact, nng, mc = results["fisher_exact"], results["fisher_nngeometry"], results["fisher_mc"]
    steps, pbu, retrain = results["steps"], results["pbu_end_to_end"], results["retrain"]
    pbu_mc = results["pbu_end_to_end_mc"]
    mib = {name: r["max_rss_mib"] for name, r in results.items() if "max_rss_mib" in r}
    pbu_total = pbu["fisher_s"] + pbu["unlearn_s"]
    pbu_mc_total = pbu_mc["fisher_s"] + pbu_mc["unlearn_s"]
    lines = [
        f"Machine: {machine()}; {args.threads} torch thread(s); load average {load_before} before, "
        f"{load_after} after. Peak RSS includes {mib['setup_only']:.0f} MiB for a process that only imports "
        "the libraries and loads the model and data.",
        "",
        "| Measurement | Wall (s) | CPU (s) | Peak RSS (MiB) | Notes |",
        "|---|---|---|---|---|",
        f"| Exact Fisher, ours ({exact['images']} images, batch {args.fisher_batch_size}) | {exact['wall_s']:.2f} | "
        f"{exact['cpu_s']:.2f} | {mib['fisher_exact']:.0f} | {exact['parameters'] / 1e6:.1f}M parameters |",
        f"| Exact Fisher, nngeometry `FIM(PMatDiag, classif_logits)` | {nng['wall_s']:.2f} | {nng['cpu_s']:.2f} | "
        f"{mib['fisher_nngeometry']:.0f} | logits sorted (see below) |",
        f"| mc Fisher, ours (1 draw per image) | {mc['wall_s']:.2f} | {mc['cpu_s']:.2f} | {mib['fisher_mc']:.0f} | |",
        *step_rows(steps, mib),
        *step_rows(results["steps_224"], None),
        f"| PBU end to end (`pipeline.unlearn`: Fisher + unlearning) | {pbu_total:.1f} | {pbu['cpu_s']:.1f} | "
        f"{mib['pbu_end_to_end']:.0f} | Fisher {pbu['fisher_s']:.1f} s + unlearning {pbu['unlearn_s']:.1f} s, "
        f"{pbu['steps']} steps; CPU includes before/after evaluation |",
        f"| PBU end to end with the mc Fisher | {pbu_mc_total:.1f} | {pbu_mc['cpu_s']:.1f} | "
        f"{mib['pbu_end_to_end_mc']:.0f} | Fisher {pbu_mc['fisher_s']:.1f} s + unlearning {pbu_mc['unlearn_s']:.1f} s, "
        f"{pbu_mc['steps']} steps |",
        f"| Retrain from scratch on the retain data | {retrain['train_runtime_s']:.1f} | {retrain['cpu_s']:.1f} | "
        f"{mib['retrain']:.0f} | {retrain['retain_train_images']} images, demo recipe (12 epochs) |",
        "",
        "| Ratio / error | Value |",
        "|---|---|",
        f"| nngeometry / ours, exact Fisher time (wall; CPU) | {nng['wall_s'] / exact['wall_s']:.1f}x; "
        f"{nng['cpu_s'] / exact['cpu_s']:.1f}x |",
        f"| ours vs nngeometry: max abs error / max entry; relative L2 | "
        f"{results['parity']['max_abs_over_max']:.2e}; {results['parity']['l2']:.2e} |",
        f"| nngeometry as the reference calls it (unsorted logits, first "
        f"{results['nngeometry_as_called_by_reference']['images']} images): NaN entries | "
        f"{100 * results['nngeometry_as_called_by_reference']['nan_fraction']:.1f}% |",
        f"| exact / mc time (wall; CPU) | {exact['wall_s'] / mc['wall_s']:.1f}x; {exact['cpu_s'] / mc['cpu_s']:.1f}x |",
        f"| mc (1 draw) vs exact: max abs error / max entry; relative L2 | "
        f"{results['mc_error']['max_abs_over_max']:.2e}; {results['mc_error']['l2']:.2e} |",
        *(
            f"| {label} at {r['image_size']}x{r['image_size']} (wall; CPU) | {overhead(r, name, 'wall_s')}; "
            f"{overhead(r, name, 'cpu_s')} |"
            for r in (steps, results["steps_224"])
            for name, label in (("pbu", "PBU step overhead over a CE step"),
                                ("pbu_autograd_penalty", "same with the penalty through autograd"))
        ),
        *(
            f"| PBU training step overhead over a CE training step (both with the optimizer update) at "
            f"{r['image_size']}x{r['image_size']} (wall; CPU) | "
            f"{overhead(r, 'pbu_with_update', 'wall_s', 'ce_with_update')}; "
            f"{overhead(r, 'pbu_with_update', 'cpu_s', 'ce_with_update')} |"
            for r in (steps, results["steps_224"])
        ),
        f"| PBU end to end / retrain time (wall): exact; mc Fisher | "
        f"{100 * pbu_total / retrain['train_runtime_s']:.1f}%; "
        f"{100 * pbu_mc_total / retrain['train_runtime_s']:.1f}% |",
        f"| A_Df / A_Dr after PBU (%): exact; mc Fisher | {pbu['after']['forget_test_accuracy']:.1f} / "
        f"{pbu['after']['retain_test_accuracy']:.1f}; {pbu_mc['after']['forget_test_accuracy']:.1f} / "
        f"{pbu_mc['after']['retain_test_accuracy']:.1f} |",
        f"| A_Df / A_Dr of the retrained model (%) | {retrain['forget_test_accuracy']:.1f} / "
        f"{retrain['retain_test_accuracy']:.1f} |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--forget_class", type=int, default=3)
    parser.add_argument("--base_model_dir", default="outputs/digits-resnet18")
    parser.add_argument("--fisher_batch_size", type=int, default=PBUConfig.fisher_batch_size)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--part", choices=sorted(PARTS))
    parser.add_argument("--work_dir")
    parser.add_argument("--json", help="Also write every raw figure to this file.")
    args = parser.parse_args()
    if args.part:
        torch.set_num_threads(args.threads)
        result = PARTS[args.part](args)
        result["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as work_dir:
        args.work_dir = work_dir
        results = {name: run_part(name, args) for name in PARTS}
        ours, mc = (torch.load(os.path.join(work_dir, f"fisher_{e}.pt")) for e in ("exact", "mc"))
        reference = torch.load(os.path.join(work_dir, "fisher_nngeometry.pt"))
        results["parity"] = relative_errors(ours, reference)
        results["mc_error"] = relative_errors(mc, ours)
    load_after = " ".join(f"{x:.1f}" for x in os.getloadavg())
    results["machine"] = {"description": machine(), "load_before": load_before, "load_after": load_after}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    print(summary(results, args, load_before, load_after))


if __name__ == "__main__":
    main()
