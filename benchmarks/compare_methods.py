"""PBU against retrain, fine-tune, UNSIR, Bad Teaching, SSD and SCRUB: methods x forget classes x seeds.

    python benchmarks/compare_methods.py --dataset digits --forget_classes 2 6 8 --seeds 0 1 2 [any PBUConfig flag]
    python benchmarks/compare_methods.py --dataset fashion_mnist --forget_classes 0 6 9 0+6 --seeds 0
    python benchmarks/compare_methods.py --dataset digits --base_label_smoothing 0 --results_dir benchmarks/plain_ce

A cell "0+6" forgets classes 0 and 6 at once. `--base_label_smoothing 0` trains the base model and the retrain
oracle with plain cross-entropy (most published classifiers) instead of timm's label smoothing 0.1.

Trains (once, cached under outputs/) the base model, then runs every cell, appending one record per cell to
benchmarks/quality_<dataset>.json; a rerun skips the cells already there with the same hyperparameters. After every
cell it rewrites the plot benchmarks/quality_<dataset>.png and the section "Quality: PBU vs baselines" of
benchmarks/RESULTS.md. Fashion-MNIST needs Debian's `dataset-fashion-mnist` package.
"""

import dataclasses
import fcntl
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import timm
from base_models import train_digits_model, train_fashion_mnist_model, training_recipe
from baselines import METHODS
from cells import (
    SECTION_TITLE,
    cell_classes,
    cell_splits,
    config_key,
    config_summary,
    markdown_table,
    parse_cell,
    plot,
    replace_section,
    run_cell,
    suite_columns,
)
from offline_data import DEFAULT_DIR, digits_dataset, fashion_mnist_dataset
from transformers import HfArgumentParser
from transformers.utils import logging

from hf_pbu import PBUConfig
from hf_pbu.data import class_names
from hf_pbu.evidence.measurement import measure
from hf_pbu.models import eval_transform

logger = logging.get_logger(__name__)

DATASETS = {
    "digits": "scikit-learn digits (8x8 upsampled to 32x32; 1,437 train / 360 test), timm ResNet-18 "
    "(11.2M parameters) trained 12 epochs by `base_models.train_digits_model` (label smoothing {smoothing:g})",
    "fashion_mnist": "Fashion-MNIST (28x28 upsampled to 32x32; 60,000 train / 10,000 test), "
    "quarter-width timm ResNet-18 (channels 16-32-64-128, 0.7M parameters) trained {epochs:g} epochs by "
    "`base_models.train_fashion_mnist_model` (label smoothing {smoothing:g})",
}


@dataclass
class BenchmarkArguments:
    dataset: str = field(default="digits", metadata={"help": "Benchmark data.", "choices": list(DATASETS)})
    methods: list[str] = field(default_factory=lambda: list(METHODS), metadata={"help": f"Among {list(METHODS)}."})
    forget_classes: list[str] = field(
        default_factory=lambda: ["2", "6", "8"],
        metadata={"help": "One cell each: a class id, or ids joined by '+' (e.g. 0+6) to forget them at once."},
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Seeds of the unlearning runs."})
    base_model_dir: str | None = field(
        default=None, metadata={"help": "Where the base model is trained and cached (default: outputs/<dataset>-...)."}
    )
    base_epochs: float = field(default=2, metadata={"help": "Epochs of the Fashion-MNIST base model (and retrain)."})
    base_label_smoothing: float = field(
        default=0.1, metadata={"help": "Label smoothing of the base model and retrain recipe (0: plain cross-entropy)."}
    )
    fashion_mnist_dir: str = field(default=DEFAULT_DIR, metadata={"help": "Folder of the Fashion-MNIST idx files."})
    mia_members: int = field(default=2000, metadata={"help": "Retained training images used as MIA members."})
    eval_batch_size: int = field(default=256, metadata={"help": "Batch size of the accuracy and MIA passes."})
    results_dir: str = field(default="benchmarks", metadata={"help": "Where the JSON, PNG and RESULTS.md go."})


def base_model_dir(args: BenchmarkArguments) -> str:
    """Where the chosen dataset's base model is trained and cached."""
    if args.base_model_dir:
        return args.base_model_dir
    suffix = "" if args.base_label_smoothing == 0.1 else f"-ls{args.base_label_smoothing:g}"
    if args.dataset == "digits":
        return f"outputs/digits-resnet18{suffix}"
    return f"outputs/fashion-mnist-resnet18q-{args.base_epochs:g}ep{suffix}"


def load_base(args: BenchmarkArguments):
    """(data, base model, retrain recipe factory, description) of the chosen dataset."""
    smoothing = args.base_label_smoothing
    model_dir = base_model_dir(args)
    if args.dataset == "digits":
        data = digits_dataset()
        train_digits_model(model_dir, label_smoothing=smoothing)
        epochs = 12
    else:
        data = fashion_mnist_dataset(args.fashion_mnist_dir)
        train_fashion_mnist_model(model_dir, data, epochs=args.base_epochs, label_smoothing=smoothing)
        epochs = args.base_epochs
    model = timm.create_model(f"local-dir:{model_dir}", pretrained=True).eval()

    def recipe(seed: int):
        return training_recipe(tempfile.mkdtemp(prefix="retrain_"), epochs, seed, smoothing)

    return data, model, recipe, epochs


def method_config(name: str, seed: int, pbu_config: PBUConfig, recipe):
    if name == "pbu":
        # Fisher cache off so that every cell's wall time includes its Fisher; no per-step logs.
        return dataclasses.replace(
            pbu_config, seed=seed, fisher_cache_dir="none", logging_strategy="no", disable_tqdm=True, report_to="none"
        )
    if name == "retrain":
        return METHODS[name].config_class(training_args=recipe(seed), seed=seed)
    return METHODS[name].config_class(seed=seed)


def load_results(path: str) -> dict:
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"records": [], "original": {}}


@contextmanager
def locked(path: str) -> Iterator[None]:
    """Holds an exclusive lock on `path` between processes: several runs (e.g. the slow retrain cells, or another
    dataset, in a second process) may update the same files at once."""
    with open(os.path.join(tempfile.gettempdir(), f"hf_pbu_{os.path.basename(path)}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_atomically(path: str, text: str) -> None:
    partial = f"{path}.{os.getpid()}.tmp"
    with open(partial, "w") as f:
        f.write(text)
    os.replace(partial, path)


def save_records(path: str, meta: dict, new_records: list[dict]) -> dict:
    """Merge this run's metadata and records into the JSON on disk (under a lock). Returns the merged results."""
    with locked(path):
        results = load_results(path)
        replaced = {(r["method"], r["forget_class"], r["seed"]) for r in new_records}
        results["records"] = [
            r for r in results["records"] if (r["method"], r["forget_class"], r["seed"]) not in replaced
        ] + new_records
        results["commands"] = [c for c in results.get("commands", []) if c != meta["command"]] + [meta["command"]]
        results["configs"] = {**results.get("configs", {}), **meta["configs"]}
        results["original"] = {**results.get("original", {}), **meta["original"]}
        results.update({k: meta[k] for k in ("description", "class_names", "plot")})
        write_atomically(path, json.dumps(results, indent=1))
    return results


def pbu_config_lines(records: list[dict]) -> list[str]:
    """One line per distinct PBU config (seed aside), with the cells that used it."""
    groups: dict[str, list[str]] = {}
    for record in records:
        if record["method"] == "pbu":
            config = json.dumps({k: v for k, v in record["config"].items() if k != "seed"})
            groups.setdefault(config, []).append(f"class {record['forget_class']} seed {record['seed']}")
    return [f"- `{config}`: {', '.join(cells)}" for config, cells in groups.items()]


def dataset_section(dataset: str, results: dict, names: list[str]) -> str:
    hyper = results["configs"]
    lines = [
        f"### {dataset}", "",
        f"Base model: {results['description']}.", "",
        (
            "Produced by these runs, in order (each resumes the JSON and adds its cells; a cell recomputed with "
            "other hyperparameters replaces the earlier one; every record's config is in the JSON):"
        ), "",
        *[f"    {command}" for command in results["commands"]], "",
        (
            "PBU hyperparameters (the `PBUConfig` defaults at the time of each run; they changed between runs "
            "where more than one line is listed):"
        ), "",
        *pbu_config_lines(results["records"]), "",
        "Baselines (each paper's defaults): " + "; ".join(
            f"{name}: `{json.dumps(cfg)}`" for name, cfg in hyper.items() if name != "pbu"
        ), "",
        markdown_table(results, names), "",
        f"![A_Dr vs A_Df]({os.path.basename(results['plot'])})", "",
    ]
    return "\n".join(lines)


def write_markdown(results_dir: str) -> None:
    """Regenerate this benchmark's section of RESULTS.md from every dataset's JSON."""
    parts = [
        SECTION_TITLE, "",
        (
            "Class unlearning on real images, one forget class at a time. A_Df: test accuracy on the forgotten class "
            "(0 is ideal); A_Dr: test accuracy on the other classes (the retrain oracle's value is ideal). MIA: share "
            "(percent) of forget-training images that a membership-inference attack fitted on retained train (members) "
            "vs retained test (non-members) calls members (`hf_pbu.evidence.mia`: SVC on the softmax entropy as in the "
            "PBU reference code, and logistic regression on loss features); lower means the forget data looks unseen. "
            "Time: wall seconds of the method alone (PBU's includes its Fisher: cache off), one torch thread "
            "(`OMP_NUM_THREADS=1`) on a 2-core CPU shared with other jobs, so only roughly comparable. Mean ± std over "
            "seeds; the seed changes the unlearning run (data order, noise, random teacher, retrain initialisation), "
            "not the base model; SSD is deterministic and runs once per class. Data needed: PBU sees only the forget "
            "data."
        ), "",
    ]
    for dataset in DATASETS:
        path = os.path.join(results_dir, f"quality_{dataset}.json")
        if os.path.exists(path):
            results = load_results(path)
            parts.append(dataset_section(dataset, results, results["class_names"]))
    md_path = os.path.join(results_dir, "RESULTS.md")
    with locked(md_path):
        document = "# hf-pbu benchmarks\n"
        if os.path.exists(md_path):
            with open(md_path) as f:
                document = f.read()
        write_atomically(md_path, replace_section(document, "\n".join(parts)))


def main() -> None:
    logging.set_verbosity_warning()
    parser = HfArgumentParser((BenchmarkArguments, PBUConfig))
    args, pbu_config = parser.parse_args_into_dataclasses(
        args=sys.argv[1:] + ([] if "--output_dir" in sys.argv else ["--output_dir", "outputs/benchmark/pbu"])
    )
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"Unknown methods {unknown}; choose among {list(METHODS)}.")
    os.makedirs(args.results_dir, exist_ok=True)
    json_path = os.path.join(args.results_dir, f"quality_{args.dataset}.json")
    png_path = os.path.join(args.results_dir, f"quality_{args.dataset}.png")

    data, base_model, recipe, epochs = load_base(args)
    names = class_names(data["train"])
    transform = eval_transform(base_model)
    results = load_results(json_path)
    meta = {
        "command": "python benchmarks/compare_methods.py " + shlex.join(sys.argv[1:]),
        "description": DATASETS[args.dataset].format(epochs=epochs, smoothing=args.base_label_smoothing),
        "class_names": names,
        "plot": png_path,
        "configs": {name: config_summary(method_config(name, 0, pbu_config, recipe)) for name in args.methods},
        "original": {},
    }
    new_records: list[dict] = []
    cells = [(0 if METHODS[m].deterministic else seed, parse_cell(c), m)
             for seed in args.seeds for c in args.forget_classes for m in args.methods]
    cells = list(dict.fromkeys(cells))  # deterministic methods run once per class
    progress = logging.tqdm(cells, desc=f"benchmark {args.dataset}")
    splits_cache: dict[int, dict] = {}
    for seed, forget_class, method in progress:
        progress.set_postfix_str(f"{method} class {forget_class} seed {seed}")
        config = method_config(method, seed, pbu_config, recipe)
        key = config_key(config_summary(config))
        results = load_results(json_path)  # re-read: another run may have finished this cell meanwhile
        if any((r["method"], r["forget_class"], r["seed"], r["config_key"]) == (method, forget_class, seed, key)
               for r in results["records"]):
            continue
        if forget_class not in splits_cache:
            splits_cache = {forget_class: cell_splits(data, transform, forget_class, args.mia_members)}
        splits = splits_cache[forget_class]
        if str(forget_class) not in results["original"] and str(forget_class) not in meta["original"]:
            meta["original"][str(forget_class)] = dataclasses.asdict(measure(base_model, splits, args.eval_batch_size))
        # PBUConfig's --evidence: the relearn attack and the probe on every cell's model and on the original.
        if pbu_config.evidence and "evidence" not in results["original"].get(str(forget_class), {}):
            name = str(forget_class)
            original = meta["original"][name] = meta["original"].get(name) or dict(results["original"][name])
            original["evidence"] = suite_columns(base_model, splits, cell_classes(forget_class), seed)
        record = run_cell(method, config, base_model, splits, args.eval_batch_size, seed,
                          cell_classes(forget_class) if pbu_config.evidence else None)
        record.update(method=method, forget_class=forget_class, seed=seed, config_key=key,
                      data_needed=METHODS[method].data_needed, config=config_summary(config))
        new_records.append(record)
        logger.warning(f"{method} class {forget_class} seed {seed}: A_Df {record['forget_test_accuracy']:.1f} "
                       f"A_Dr {record['retain_test_accuracy']:.1f} ({record['seconds']:.0f} s)")
        merged = save_records(json_path, meta, new_records)
        plot(merged, png_path, f"{args.dataset}: A_Dr vs A_Df (mean ± std over seeds)")
        write_markdown(args.results_dir)
    merged = save_records(json_path, meta, new_records)
    plot(merged, png_path, f"{args.dataset}: A_Dr vs A_Df (mean ± std over seeds)")
    write_markdown(args.results_dir)
    print(f"Results: {json_path}, {png_path}, {os.path.join(args.results_dir, 'RESULTS.md')}")


if __name__ == "__main__":
    main()
