"""Forget one or more classes of an image classifier (timm or transformers) with Partially Blinded Unlearning.

    hf-pbu unlearn --model_id timm/convnext_large --dataset_name ethz/food101 --forget_class 20
    python scripts/unlearn.py --model_id timm/resnet50.a1_in1k --dataset_name imagenet-1k --forget_class 20 \
        --output_dir outputs/resnet50-unlearned
    accelerate launch scripts/unlearn.py --model_id org/vit-cifar10 --dataset_name cifar10 --forget_class cat ...
    python scripts/unlearn.py --model_id org/name --forget_dir images_of_cats/ --forget_class cat ...  (forget-only)
    python scripts/unlearn.py config.yaml   (the same arguments in a YAML or JSON file)

Any `PBUConfig` flag (alpha, beta, gamma, learning_rate, ...) is accepted. Writes the unlearned model in its source
format to --output_dir as soon as it is trained, then, once, its card and unlearning_results.json (A_Df, A_Dr,
forget-train accuracy, MIA and the attacks, before and after), and uploads that folder with --push_to_hub. Bad
values, an output folder that cannot be written or that another run holds, and missing `--push_to_hub`
prerequisites are refused before anything is loaded, and a run whose files do not fit in the output folder's free
space once the model is loaded; a refused run leaves no output folder or lock file behind. A run that cannot give
an unlearned model, that did not forget (forget-train accuracy above --stop_forget_accuracy) or whose evidence step
failed exits non-zero with the fix, is marked so in the results and the card, and is not pushed.
"""

import logging as pylogging
import os
import sys
from dataclasses import asdict

import torch
from huggingface_hub.errors import HfHubHTTPError
from transformers import HfArgumentParser
from transformers.utils import logging

from ..config import PBUConfig
from ..data import load_unlearning_splits
from ..evidence.suite import below_level
from ..failures import UnlearningFailedError
from ..io.atomic import CAUSES
from ..io.model_card import CARD_FILE, card_dataset, card_datasets, load_base_card
from ..io.output_lock import OutputFolderInUseError
from ..io.publish import HubPushError, push_unlearned_model
from ..models import load_classifier
from ..results import RESULTS_FILE
from ..unlearning import unlearn
from .arguments import DataArguments, ModelArguments
from .config_file import parse_arguments_file
from .preflight import check_space, preflight

logger = logging.get_logger(__name__)


def parse(argv: list[str]) -> tuple[ModelArguments, DataArguments, PBUConfig]:
    """The arguments from the command line, or from one YAML or JSON file (each value read as its flag's type)."""
    parser = HfArgumentParser((ModelArguments, DataArguments, PBUConfig))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json")):
        return parse_arguments_file(parser, argv[0])
    return parser.parse_args_into_dataclasses(args=argv)


def run(model_args: ModelArguments, data_args: DataArguments, config: PBUConfig) -> None:
    """One run, after the checks that need no model or data (`hf_pbu.cli.preflight`), holding the output folder."""
    if config.should_log:
        logging.set_verbosity_info()
    log_level = config.get_process_log_level()
    logging.set_verbosity(log_level)
    pylogging.basicConfig(format="%(levelname)s - %(name)s - %(message)s", handlers=[pylogging.StreamHandler()])
    pylogging.getLogger("hf_pbu").setLevel(log_level)
    with preflight(config, model_args.model_id) as checkpoint:
        unlearn_and_save(model_args, data_args, config, checkpoint)


def unlearn_and_save(model_args: ModelArguments, data_args: DataArguments, config: PBUConfig,
                     checkpoint: str | None = None) -> None:
    """Load, unlearn and measure, write the model, its card and results once (`hf_pbu.unlearning.unlearn`), print
    the outcome and, if the run did its job, upload the folder; resume `checkpoint` if given."""
    loaded = load_classifier(model_args.model_id, model_args.revision, model_args.cache_dir,
                             model_args.trust_remote_code)
    check_space(loaded.model, config)  # before any work: the estimate needs the model's size
    base_card = load_base_card(loaded.source)
    if data_args.dataset_name is None and data_args.dataset_dir is None and data_args.forget_dir is None:
        named = card_datasets(base_card)
        if not named:
            raise ValueError(
                f"{model_args.model_id!r} names no dataset in its model card: pass --dataset_name (a Hub dataset id, "
                "or 'imagefolder' with --dataset_dir), or --forget_dir with images of the class(es) to forget."
            )
        data_args.dataset_name = named[0]
        logger.info(f"Using the dataset named in the model card: {named[0]}")
    with config.main_process_first(desc="loading the dataset"):
        data = load_unlearning_splits(loaded, cache_dir=model_args.cache_dir, seed=config.seed, **asdict(data_args))
    dataset_name, hub_dataset = card_dataset(data_args.dataset_name, data_args.dataset_dir)
    card_args = {"dataset_name": dataset_name, "hub_dataset": hub_dataset}
    # Saved with its card and results as soon as it is measured, before the optional evidence and push.
    trainer, results = unlearn(
        loaded.model, config, data.splits, data.forget_classes, checkpoint, data.eval_split,
        data.eval_holdout_fraction, save=True, card_kwargs=card_args,
        base_model_id=loaded.source, base_card=base_card, class_names=loaded.label_names or data.names,
        processing_class=loaded.image_processor,
    )
    trainer.accelerator.end_training()  # the last collective is behind: the process group ends before the processes
    failures = run_failures(trainer, results, config)
    classes = ", ".join(data.names[c] for c in data.forget_classes)
    if trainer.is_world_process_zero():
        outcome = "Forgot" if results.forgotten else "Did NOT forget"
        print(f"\n{outcome} {classes} of {model_args.model_id} using {results.forget_train_samples} forget images.")
        print(results.format_table())
    # The folder is complete: the upload sends it as it is. A failed push leaves it so; a failed run is not pushed.
    url = None
    if config.push_to_hub and not failures and trainer.is_world_process_zero():
        url = push_unlearned_model(config.output_dir, config)
    if trainer.is_world_process_zero():
        output_dir = os.path.abspath(config.output_dir)
        print(f"Unlearned model: {output_dir} (reload it as the base model was loaded, from this folder)")
        print(f"Results: {os.path.join(output_dir, RESULTS_FILE)}; model card: {os.path.join(output_dir, CARD_FILE)}")
        if url:
            print(f"Pushed to {url}")
    if failures:
        level = (results.evidence or {}).get("forgetting_level")
        marks = [mark for mark, on in (("`forgotten: false`", not results.forgotten),
                                       ("`evidence_error`", results.evidence_error),
                                       (f"forgotten at the `{level and level['level']}` level",
                                        below_level(level, config.evidence_required_level))) if on]
        pushed = " Nothing was pushed." if config.push_to_hub else ""
        raise RunFailedError(" ".join(failures) + f" The model, its card and {RESULTS_FILE} are saved in "
                             f"{os.path.abspath(config.output_dir)} (marked {' and '.join(marks)}).{pushed}")


class RunFailedError(UnlearningFailedError):
    """The run did not do its job (or an optional step after it failed); the saved folder says so."""


def run_failures(trainer, results, config: PBUConfig | None = None) -> list[str]:
    """What went wrong, each with the fix: a run that did not forget, an evidence step that failed (a full disk:
    the write's own message, which names the folder and what it keeps; `--evidence` named only when it was given)."""
    failures = []
    if not results.forgotten:
        failures.append(trainer.not_forgotten_message(results.after.forget_train_accuracy))
    if results.evidence_error:
        failure = getattr(trainer, "evidence_failure", None)
        if isinstance(failure, OSError) and failure.errno in CAUSES:
            failures.append(f"The evidence step could not write its files: {failure}")
        elif config is not None and config.evidence:
            failures.append(f"The evidence step failed after unlearning ({results.evidence_error}): rerun without "
                            "--evidence, or report the error.")
        else:
            failures.append(f"The evidence step failed after unlearning ({results.evidence_error}): report the error "
                            "(the per-class view and the head attacks run on every run).")
    level = (results.evidence or {}).get("forgetting_level")
    if below_level(level, trainer.args.evidence_required_level):
        share = level["recovered"][level["strongest"]]
        failures.append(
            f"The run's own attacks find the class {level['text']} (strongest: {level['strongest']}, "
            f"{100 * share:.0f}% of what it gives back on the original), below --evidence_required_level "
            f"{trainer.args.evidence_required_level}. Try --forget_row_centring true (the forget rows cannot hide the "
            "class by a shift; check the retained classes' accuracy) or --forget_level features, or accept this "
            f"level with --evidence_required_level {level['level']}.")
    return failures


def use_cpu_when_launched_without_accelerator() -> None:
    """Under `accelerate launch` on a machine with no accelerator, run the processes as one gloo group on CPU:
    `TrainingArguments` would otherwise start them as unconnected single-process runs unless given `--use_cpu`."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def main(argv: list[str] | None = None) -> None:
    use_cpu_when_launched_without_accelerator()
    try:
        run(*parse(sys.argv[1:] if argv is None else argv))
    # One clear message, not a traceback; exit status 1.
    except (ValueError, OSError, HfHubHTTPError, HubPushError, UnlearningFailedError, OutputFolderInUseError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
