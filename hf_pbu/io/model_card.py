"""The model card of an unlearned model: what was forgotten, how, and how well, with Hub metadata.

The card is rendered from the package's template (`hf_pbu/model_cards/unlearned_model.md`) with
`huggingface_hub.ModelCard.from_template` from a run's `UnlearningResults`, and always written to
`output_dir/README.md`, so a local run documents itself as well as a pushed one. `PBUTrainer.create_model_card` is
the one caller: the command line and `trainer.push_to_hub()` publish the same card.
"""

import json
import os
import platform
from pathlib import Path

import httpx2
import torch
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers.utils import logging

from ..config import PBUConfig
from ..evidence.suite import below_level, suite_rows
from ..models import hub_model_id_of, resolve_model_id, specific_names
from ..results import Measurement, UnlearningResults
from ..stopping import STOP_RULES, stop_outcome
from .atomic import write_text
from .escaping import code_span_text, markdown_text

logger = logging.get_logger(__name__)

TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "model_cards" / "unlearned_model.md"
CARD_FILE = "README.md"
TAGS = ["machine-unlearning", "class-unlearning", "pbu", "image-classification"]
# Rows of the before/after table: (label, `Measurement` field).
ACCURACY_ROWS = [
    ("A_Df: forget-class test accuracy (%)", "forget_test_accuracy"),
    ("A_Dr: retained-classes test accuracy (%)", "retain_test_accuracy"),
    ("Forget-class training accuracy, S_n (%)", "forget_train_accuracy"),
]
METRIC_NAMES = {
    "forget_test_accuracy": "Forget accuracy A_Df (forgotten classes, test split, %)",
    "retain_test_accuracy": "Retain accuracy A_Dr (retained classes, test split, %)",
}


def hub_repo_id(output_dir: str, config: PBUConfig) -> str:
    """The repository pushed to: `hub_model_id`, else the output folder's real name (as `Trainer` does; `a/b/..`
    is `a`)."""
    return config.hub_model_id or folder_name(output_dir)


def folder_name(path: str) -> str:
    """The name of the folder `path` designates, with `.` and `..` resolved (`Path.absolute` keeps them)."""
    return Path(os.path.abspath(path)).name


def base_model_of(model: torch.nn.Module, source: str | None = None) -> tuple[str | None, str | None]:
    """(the base model's Hub repo id, resolved, or None; a display name when it is local). From `source`, the id or
    folder the model was loaded from, when given; else from the model: timm's pretrained config names its Hub repo
    (`hf_hub_id`), a transformers config the id it was loaded from (`_name_or_path`)."""
    if source is None:
        config = getattr(model, "config", None)
        source = (getattr(model, "pretrained_cfg", None) or {}).get("hf_hub_id") or getattr(config, "_name_or_path", "")
        if not source:
            return None, None
    repo_id = hub_model_id_of(source)
    if repo_id is None:
        return None, Path(source.removeprefix("local-dir:")).name
    return resolve_model_id(repo_id), None


def model_class_names(model: torch.nn.Module) -> list[str] | None:
    """The class names a timm (`pretrained_cfg["label_names"]`) or transformers (`config.id2label`) model carries;
    None when it has none or only generic ones (LABEL_0, ...)."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    config = getattr(model, "config", None)
    if names is None and getattr(config, "id2label", None):
        names = [config.id2label[i] for i in sorted(config.id2label)]
    return specific_names(list(names), len(names)) if names else None


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
    return (folder_name(local) if local else None), False


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


def results_table(results: UnlearningResults) -> list[dict]:
    """Rows {label, before, after} of the before/after table (none when the run was not measured)."""
    if results.before is None and results.after is None:
        return []
    rows = [(label, key, None) for label, key in ACCURACY_ROWS]
    attacks = dict.fromkeys([*((results.before and results.before.mia) or {}), *((results.after and results.after.mia)
                                                                                or {})])
    rows += [(f"MIA: forget-train images called members, {name} (%)", None, name) for name in attacks]

    def cell(measurement: Measurement | None, key: str | None, attack: str | None) -> str:
        if measurement is None:
            return "n/a"
        return format_value(getattr(measurement, key) if key else (measurement.mia or {}).get(attack))

    table = [
        {
            "label": label,
            "before": cell(results.before, key, attack),
            "after": cell(results.after, key, attack),
        }
        for label, key, attack in rows
    ]
    return table


def evidence_rows(evidence: dict | None) -> list[dict]:
    """Rows {label, reach, before, after} of the evidence table: each attack of the suite that was run
    (`hf_pbu.evidence.suite_rows`), original model against unlearned one, figures formatted."""
    return [{**row, "before": format_value(row["before"]), "after": format_value(row["after"])}
            for row in suite_rows((evidence or {}).get("attacks") or {})]


def confusion_text(confusion: dict[str, dict[str, float]]) -> dict[str, str]:
    """{forgotten class: "shirt 61.0%, pullover 20.0%, ..."}: where its test images are predicted, as Markdown
    table cells (class names escaped: `hf_pbu.io.escaping.markdown_text`)."""
    return {markdown_text(name): ", ".join(f"{markdown_text(predicted)} {share:.1f}%"
                                           for predicted, share in shares.items()) or "n/a"
            for name, shares in confusion.items()}


def chart_classes(evidence: dict | None, names: list[str]) -> list[dict]:
    """Rows {id, name} for the classes of the per-class chart when its axis shows class ids (names the chart's font
    cannot draw, `hf_pbu.evidence.per_class`); none otherwise."""
    ids = (evidence or {}).get("chart_class_ids") or []
    return [{"id": c, "name": markdown_text(names[c]) if 0 <= c < len(names) else "(unnamed)"} for c in ids]


def compute_notes(results: UnlearningResults) -> tuple[str, str]:
    """What the card's Fisher and unlearning times cover, when not just this process's work."""
    fisher = {
        "cached": "read from the cache; the time it took when it was computed",
        "resumed": "resumed from the partial sums of an interrupted run; the time before the interruption included",
        "given": "given by the caller, not computed",
        "not needed": "not computed: beta is 0",
    }.get(results.fisher_source, "")
    unlearning = ""
    if results.resumed_from_step is not None:
        unlearning = (f"resumed from the checkpoint of step {results.resumed_from_step}; the "
                      f"{results.resumed_seconds:.1f} s before the interruption included")
    return fisher, unlearning


def eval_results(results: UnlearningResults, dataset_name: str | None, hub_dataset: bool = True) -> list[EvalResult]:
    """After-unlearning A_Df, A_Dr (and MIA) as `EvalResult`s, so the Hub lists them in the model-index."""
    if results.after is None:
        return []
    dataset = {
        "dataset_type": dataset_name if dataset_name and hub_dataset else "custom",
        "dataset_name": dataset_name or "custom",
        "dataset_split": results.eval_split or "test",
    }
    common = {"task_type": "image-classification", "task_name": "Class unlearning", **dataset}
    after = results.after
    entries = [
        EvalResult(metric_type="accuracy", metric_name=name, metric_value=getattr(after, key), **common)
        for key, name in METRIC_NAMES.items()
        if getattr(after, key) is not None
    ]
    entries += [
        EvalResult(
            metric_type="membership_inference",
            metric_name=f"MIA: forget-train images called members, {name} (%)",
            metric_value=value,
            **common,
        )
        for name, value in (after.mia or {}).items()
        if value is not None
    ]
    return entries


FORGET_LEVEL_NOTES = {
    "head": "The forgotten classes' rows of the classifier head were also freed from the anchor and refit until "
            "each forgotten class ranked last on its own images, as in a model retrained without it "
            "(`forget_level='head'`).",
    "features": "The forgotten classes' rows of the classifier head were also freed from the anchor and refit until "
                "each forgotten class ranked last on its own images, and the forget term was taken through the "
                "original head, so that the features of the forgotten classes moved out of their region "
                "(`forget_level='features'`).",
}


def forget_loss_note(config: PBUConfig) -> str:
    """How the run differs from the paper: its forget term, if not the paper's -CE, and its forget level."""
    notes = []
    if config.forget_loss != "neg_ce":
        notes.append(f"This run replaced the paper's -CE forget term with `{config.forget_loss}` "
                     f"({config.build_forget_loss().summary}), a term bounded below whose push on the forgotten "
                     "classes vanishes once an image is forgotten.")
    if config.forget_level in FORGET_LEVEL_NOTES:
        notes.append(FORGET_LEVEL_NOTES[config.forget_level])
        if config.forget_row_centring:
            notes.append("Each refit row kept the retained rows' mean coordinate (`forget_row_centring`), so that it "
                         "could not hide its class by a uniform shift.")
    return " ".join(notes)


def hyperparameters(config: PBUConfig, results: UnlearningResults) -> list[tuple[str, str]]:
    """(name, value) rows of the run's PBU settings."""
    estimator = results.fisher_estimator or config.fisher_estimator
    if estimator == "mc":
        estimator += f" ({config.fisher_mc_samples} sampled label(s) per image)"
    if estimator == "exact" and config.fisher_top_mass is not None:
        estimator += f" over each image's classes covering {config.fisher_top_mass:g} of its probability"
    if config.fisher_estimator == "auto":
        estimator += f" (auto: 'exact' up to {config.fisher_exact_max_classes} classes)"
    if config.fisher_max_samples is not None and results.forget_train_samples > config.fisher_max_samples:
        estimator += f", on a random sample of {config.fisher_max_samples} forget images"
    level = [("Forget level (`forget_level`)", config.forget_level)]
    if config.refits_forget_rows:
        level.append(("Learning rate of the forget classes' head rows", f"{config.forget_row_learning_rate:g}"))
        level.append(("Forget rows centred (`forget_row_centring`)", str(config.forget_row_centring)))
    return [
        *level,
        ("Forget term (`forget_loss`)", f"{config.forget_loss}: {config.build_forget_loss().summary}"),
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
        ("Optimizer steps run", str(results.steps)),
        ("Stop criterion (`stop_rule`)", STOP_RULES[config.resolved_stop_rule].criterion(config)),
        ("BatchNorm statistics frozen", str(config.freeze_batchnorm)),
        ("Seed", str(config.seed)),
    ]


def write_model_card(
    output_dir: str,
    results: UnlearningResults,
    config: PBUConfig,
    family: str,
    base_model_id: str | None,
    base_model_name: str | None = None,
    label_names: list[str] | None = None,
    dataset_name: str | None = None,
    hub_dataset: bool = True,
    base_card: ModelCard | None = None,
    tags: list[str] | None = None,
) -> ModelCard:
    """The card of an unlearned model, saved as `output_dir/README.md` whether or not it is pushed.

    `base_model_id`: the Hub repo the model was unlearned from, resolved (e.g. `timm/convnext_large.fb_in22k_ft_in1k`,
    not `timm/convnext_large`), or None for a local model (`base_model_name` then names it). `dataset_name` is listed
    in the `datasets` metadata only when `hub_dataset` (see `card_dataset`). `base_card`: the base model's card, whose
    license the card carries (`load_base_card`). `tags` are added to the card's own.
    """
    if family not in ("timm", "transformers"):
        raise ValueError(f"family must be 'timm' or 'transformers', got {family!r}.")
    base_data = base_card.data if base_card is not None else None
    repo_id = hub_repo_id(output_dir, config)
    card_data = ModelCardData(
        base_model=base_model_id,
        base_model_relation="finetune" if base_model_id else None,
        library_name=family,
        tags=list(dict.fromkeys(TAGS + (["timm"] if family == "timm" else []) + list(tags or []))),
        datasets=[dataset_name] if dataset_name and hub_dataset else None,
        license=getattr(base_data, "license", None),
        license_name=getattr(base_data, "license_name", None),
        license_link=getattr(base_data, "license_link", None),
        pipeline_tag="image-classification",
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results(results, dataset_name, hub_dataset) or None,
    )
    table = results_table(results)
    names = label_names or []
    forgotten = [
        {"id": c, "name": markdown_text(names[c]) if 0 <= c < len(names) else "(unnamed)"}
        for c in results.forget_classes
    ]
    collapsed = [{**item, "name": markdown_text(item["name"]), "before": format_value(item["before"]),
                  "after": format_value(item["after"])} for item in results.collapsed_classes or []]
    fisher_note, unlearn_note = compute_notes(results)
    # User data (class, folder, dataset and split names) is escaped for where it lands: text, code span, string.
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        repo_id=json.dumps(repo_id)[1:-1],
        title=markdown_text(repo_id.split("/")[-1]),
        base_model_name=markdown_text(base_model_id) if base_model_id else code_span_text(
            base_model_name or "the base model"),
        base_model_url=f"https://huggingface.co/{base_model_id}" if base_model_id else None,
        family=family,
        forgotten=forgotten,
        num_classes=len(label_names) if label_names else None,
        dataset_name=code_span_text(dataset_name) if dataset_name else None,
        eval_split=code_span_text(results.eval_split or "test"),
        eval_holdout_fraction=results.eval_holdout_fraction,
        forget_train_samples=results.forget_train_samples,
        hyperparameters=hyperparameters(config, results),
        stop_outcome=stop_outcome(config, results.stopped_at_step, results.steps),
        not_forgotten=results.forgotten is False,
        final_forget_accuracy=format_value(results.after.forget_train_accuracy if results.after else None),
        evidence_error=results.evidence_error,
        collapsed=collapsed,
        retained_drop_warning=f"{results.retained_drop_warning:g}" if results.retained_drop_warning is not None else "",
        chart_classes=chart_classes(results.evidence, names),
        steps=results.steps,
        stop_forget_accuracy=f"{config.stop_forget_accuracy:g}",
        forget_loss_note=forget_loss_note(config),
        table=table,
        evidence=results.evidence or {},
        evidence_rows=evidence_rows(results.evidence),
        forgetting_level=(results.evidence or {}).get("forgetting_level"),
        evidence_costly=config.evidence,
        below_required_level=below_level((results.evidence or {}).get("forgetting_level"),
                                         config.evidence_required_level),
        required_level=config.evidence_required_level,
        confusion_after=confusion_text((results.evidence or {}).get("forget_confusion", {}).get("after", {})),
        has_mia=any(row["label"].startswith("MIA") for row in table),
        fisher_seconds=f"{results.fisher_seconds:.1f}",
        fisher_note=fisher_note,
        unlearn_seconds=f"{results.unlearn_seconds:.1f}",
        unlearn_note=unlearn_note,
        hardware=hardware_description(),
    )
    write_text(os.path.join(output_dir, CARD_FILE), str(card))  # whole, or the previous card left as it was
    return card
