"""The model card of an unlearned model: what was forgotten, how, and how well, with Hub metadata.

The card is rendered from `model_cards/unlearned_model.md` with `huggingface_hub.ModelCard.from_template` and
always written to `output_dir/README.md`, so a local run documents itself as well as a pushed one.
"""

import os
import platform
from pathlib import Path

import httpx2
import torch
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers.utils import logging

from .config import PBUConfig
from .forget_losses import build_forget_loss

logger = logging.get_logger(__name__)

TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "model_cards" / "unlearned_model.md"
CARD_FILE = "README.md"
TAGS = ["machine-unlearning", "pbu", "image-classification"]
# Rows of the before/after table: (label, key of the measurement dicts in the results).
ACCURACY_ROWS = [
    ("A_Df: forget-class test accuracy (%)", "forget_accuracy"),
    ("A_Dr: retained-classes test accuracy (%)", "retain_accuracy"),
    ("Forget-class training accuracy, S_n (%)", "forget_train_accuracy"),
]
METRIC_NAMES = {
    "forget_accuracy": "Forget accuracy A_Df (forgotten classes, test split, %)",
    "retain_accuracy": "Retain accuracy A_Dr (retained classes, test split, %)",
}


def hub_repo_id(output_dir: str, config: PBUConfig) -> str:
    """The repository pushed to: `hub_model_id`, else the output folder's name (as `Trainer` does)."""
    return config.hub_model_id or Path(output_dir).absolute().name


def hub_model_id_of(source: str) -> str | None:
    """`source` as a Hub repo id (no `hf-hub:` prefix, no `@revision`), or None for a local folder."""
    for prefix in ("hf-hub:", "hf_hub:"):
        source = source.removeprefix(prefix)
    if source.startswith("local-dir:") or os.path.exists(source):
        return None
    repo_id = source.split("@", 1)[0]
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None
    return repo_id


def load_base_card(base_model: str) -> ModelCard | None:
    """The base model's card, from the Hub (or its cache) or a local folder; None when it cannot be read."""
    local_dir = base_model.removeprefix("local-dir:")
    repo_id = hub_model_id_of(base_model)
    target = repo_id or os.path.join(local_dir, CARD_FILE)
    if repo_id is None and not os.path.isfile(target):
        return None
    try:
        return ModelCard.load(target, ignore_metadata_errors=True)
    # Offline, no card, or an unreadable one: the card is written without the base model's license.
    except (OSError, httpx2.HTTPError, yaml.YAMLError) as err:
        logger.info(
            f"Could not read the model card of {base_model} ({type(err).__name__}); no license carried over."
        )
        return None


def card_dataset(dataset_name: str | None, dataset_dir: str | None) -> tuple[str | None, bool]:
    """(name of the run's data for the card, whether it is a Hub dataset). Local data (an imagefolder, a
    `save_to_disk` folder) goes by its folder's name and stays out of the card's `datasets` metadata, which the Hub
    reads as dataset repo ids: "imagefolder" is a loader, not a dataset."""
    if dataset_dir is None and dataset_name is not None and not os.path.exists(dataset_name):
        return dataset_name, True
    local = dataset_dir or dataset_name
    return (Path(local).absolute().name if local else None), False


def card_datasets(card: ModelCard | None) -> list[str]:
    """The datasets named in a model card's metadata (`datasets:`), if any."""
    datasets = card.data.datasets if card is not None else None
    return [datasets] if isinstance(datasets, str) else list(datasets or [])


def hardware_description() -> str:
    """The accelerator (or CPU) this process runs on, for the card's compute section."""
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        return f"{count} x {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return f"CPU: {cpu} ({os.cpu_count()} cores)"


def format_value(value: float | None) -> str:
    """Table cell: two decimals, or 'n/a' for a measurement not taken (e.g. no forget test images)."""
    return "n/a" if value is None else f"{value:.2f}"


def mia_entries(measurement: dict) -> dict[str, float | None]:
    """The membership-inference numbers of one measurement, as {"attack" or "attack / field": value}."""
    entries = {}
    for attack, value in (measurement.get("mia") or {}).items():
        if isinstance(value, dict):
            entries.update({f"{attack} / {field}": inner for field, inner in value.items()})
        else:
            entries[attack] = value
    return {name: value for name, value in entries.items() if value is None or isinstance(value, int | float)}


def results_table(results: dict) -> tuple[list[dict], bool]:
    """Rows {label, before, after, retrain} of the before/after table; whether a retrain reference exists."""
    reference = results.get("retrain")
    rows = [(label, key, None) for label, key in ACCURACY_ROWS]
    mia_names = dict.fromkeys([*mia_entries(results["before"]), *mia_entries(results["after"])])
    rows += [(f"MIA: forget-train images called members, {name} (%)", None, name) for name in mia_names]

    def cell(measurement: dict | None, key: str | None, mia_name: str | None) -> str:
        if measurement is None:
            return "n/a"
        return format_value(measurement.get(key) if key else mia_entries(measurement).get(mia_name))

    table = [
        {
            "label": label,
            "before": cell(results["before"], key, mia_name),
            "after": cell(results["after"], key, mia_name),
            "retrain": cell(reference, key, mia_name),
        }
        for label, key, mia_name in rows
    ]
    return table, reference is not None


def eval_results(results: dict, dataset_name: str | None, hub_dataset: bool = True) -> list[EvalResult]:
    """After-unlearning A_Df, A_Dr (and MIA) as `EvalResult`s, so the Hub lists them in the model-index."""
    dataset = {
        "dataset_type": dataset_name if dataset_name and hub_dataset else "custom",
        "dataset_name": dataset_name or "custom",
        "dataset_split": results.get("eval_split") or "test",
    }
    common = {"task_type": "image-classification", "task_name": "Class unlearning", **dataset}
    after = results["after"]
    entries = [
        EvalResult(metric_type="accuracy", metric_name=METRIC_NAMES[key], metric_value=after[key], **common)
        for key in METRIC_NAMES
        if after.get(key) is not None
    ]
    entries += [
        EvalResult(
            metric_type="membership_inference",
            metric_name=f"MIA: forget-train images called members, {name} (%)",
            metric_value=value,
            **common,
        )
        for name, value in mia_entries(after).items()
        if value is not None
    ]
    return entries


def forget_loss_note(config: PBUConfig) -> str:
    """For a forget term other than the paper's -CE, one sentence on how the run differs from the paper."""
    if config.forget_loss == "neg_ce":
        return ""
    loss = build_forget_loss(config.forget_loss, config.npo_tau, config.distill_weight)
    return (
        f"This run replaced the paper's -CE forget term with `{config.forget_loss}` ({loss.summary}), a term bounded "
        "below whose push on the forgotten classes vanishes once an image is forgotten, and "
        + ("ran until the objective stopped falling instead of stopping as soon as the classes were gone."
           if config.resolved_stop_rule == "plateau" else "stopped as soon as the classes were gone.")
    )


def stop_criterion(config: PBUConfig) -> str:
    if config.resolved_stop_rule == "plateau":
        return (
            f"plateau: the objective (forget term's mean over an epoch plus the anchor penalty) fell by less than "
            f"{config.stop_plateau_tolerance:g} (relative) for {config.stop_plateau_patience} epochs in a row"
        )
    return (
        f"forget-train accuracy <= {config.stop_forget_accuracy:g}% on the whole forget set, evaluated "
        f"when a step's training batches read <= {config.stop_trigger_accuracy:g}%; the run ends with the "
        "weights that passed"
    )


def hyperparameters(config: PBUConfig, results: dict) -> list[tuple[str, str]]:
    """(name, value) rows of the run's PBU settings."""
    estimator = results.get("fisher_estimator") or config.fisher_estimator
    if estimator == "mc":
        estimator += f" ({config.fisher_mc_samples} sampled label(s) per image)"
    if estimator == "exact" and config.fisher_top_mass is not None:
        estimator += f" over each image's classes covering {config.fisher_top_mass:g} of its probability"
    if config.fisher_estimator == "auto":
        estimator += f" (auto: 'exact' up to {config.fisher_exact_max_classes} classes)"
    return [
        ("Forget term (`forget_loss`)", f"{config.forget_loss}: "
         f"{build_forget_loss(config.forget_loss, config.npo_tau, config.distill_weight).summary}"),
        ("alpha (weight of the forget term on the forget data)", f"{config.alpha:g}"),
        ("beta (weight of the Fisher-weighted distance)", f"{config.beta:g}"),
        ("gamma (weight of the plain L2 distance)", f"{config.gamma:g}"),
        ("Fisher estimator", estimator),
        (
            "Optimizer / learning rate",
            f"{config.optim.value} / {config.learning_rate:g} ({config.lr_scheduler_type.value} schedule)",
        ),
        (
            "Batch size (per device x processes)",
            f"{config.per_device_train_batch_size} x {config.world_size}",
        ),
        ("Epoch budget over S_n", f"{config.num_train_epochs:g}"),
        ("Optimizer steps run", str(results["steps"])),
        ("Stop criterion", stop_criterion(config)),
        ("BatchNorm statistics frozen", str(config.freeze_batchnorm)),
        ("Seed", str(config.seed)),
    ]


def write_model_card(
    output_dir: str,
    results: dict,
    config: PBUConfig,
    base_model: str,
    family: str,
    label_names: list[str] | None,
    dataset_name: str | None,
    base_card: ModelCard | None = None,
    hub_dataset: bool = True,
) -> ModelCard:
    """The card of an unlearned model, from a run's results (the dict `hf_pbu.pipeline.unlearn` returns), saved as
    `output_dir/README.md` whether or not it is pushed. `dataset_name` is listed in the `datasets` metadata only
    when `hub_dataset` (see `card_dataset`)."""
    if family not in ("timm", "transformers"):
        raise ValueError(f"family must be 'timm' or 'transformers', got {family!r}.")
    base_card = base_card or load_base_card(base_model)
    base_data = base_card.data if base_card is not None else None
    base_repo_id = hub_model_id_of(base_model)
    repo_id = hub_repo_id(output_dir, config)
    card_data = ModelCardData(
        base_model=base_repo_id,
        library_name=family,
        tags=TAGS + (["timm"] if family == "timm" else []),
        datasets=[dataset_name] if dataset_name and hub_dataset else None,
        license=getattr(base_data, "license", None),
        license_name=getattr(base_data, "license_name", None),
        license_link=getattr(base_data, "license_link", None),
        pipeline_tag="image-classification",
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results(results, dataset_name, hub_dataset) or None,
    )
    table, has_retrain = results_table(results)
    names = label_names or []
    forgotten = [
        {"id": c, "name": names[c].replace("|", "\\|") if 0 <= c < len(names) else "(unnamed)"}
        for c in results["forget_classes"]
    ]
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        repo_id=repo_id,
        title=repo_id.split("/")[-1],
        base_model_name=base_repo_id or Path(base_model.removeprefix("local-dir:")).name,
        base_model_url=f"https://huggingface.co/{base_repo_id}" if base_repo_id else None,
        family=family,
        forgotten=forgotten,
        num_classes=len(label_names) if label_names else None,
        dataset_name=dataset_name,
        eval_split=results.get("eval_split") or "test",
        eval_holdout_fraction=results.get("eval_holdout_fraction"),
        forget_train_samples=results["forget_train_samples"],
        hyperparameters=hyperparameters(config, results),
        stopped_at_step=results.get("stopped_at_step"),
        steps=results["steps"],
        stop_forget_accuracy=f"{config.stop_forget_accuracy:g}",
        stop_rule=config.resolved_stop_rule,
        forget_loss_note=forget_loss_note(config),
        table=table,
        has_retrain=has_retrain,
        has_mia=any(row["label"].startswith("MIA") for row in table),
        fisher_seconds=f"{results['fisher_seconds']:.1f}",
        unlearn_seconds=f"{results['unlearn_seconds']:.1f}",
        hardware=hardware_description(),
    )
    os.makedirs(output_dir, exist_ok=True)
    card.save(os.path.join(output_dir, CARD_FILE))
    return card
