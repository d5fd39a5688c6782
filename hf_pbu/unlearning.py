"""One unlearning run: measure, unlearn with `PBUTrainer`, measure again, and report."""

import copy
import dataclasses
import time
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers.utils import logging

from .config import PBUConfig
from .evidence import collect_evidence
from .evidence.measurement import measure
from .evidence.per_class import per_class_accuracy
from .models import num_classes
from .results import Measurement, UnlearningResults
from .trainer import PBUTrainer

logger = logging.get_logger(__name__)

# The forget class counts as recognised when the model's accuracy on its training images is above twice chance
# (capped halfway between chance and 100% for two classes) and above 1%: a model that scores at most that on the
# class's own training images never learnt it under these labels, and "forgetting" it would only measure noise.
RECOGNITION_FLOOR = 1.0


def recognition_threshold(classes: int) -> float:
    """Forget-train accuracy (percent) at or below which the model is taken not to know the forget class."""
    chance = 100.0 / classes
    return max(RECOGNITION_FLOOR, min(2 * chance, (chance + 100.0) / 2))


def check_model_knows_forget_classes(before: Measurement, classes: int) -> None:
    """Refuse to unlearn a class that the model does not recognise on this data: its accuracy on the class's own
    training images is near chance, so the labels do not mean what the model's outputs mean (another dataset, or
    ids matched to the wrong classes) and the run would "forget" it in one step."""
    threshold = recognition_threshold(classes)
    if before.forget_train_accuracy <= threshold:
        raise ValueError(
            f"The model does not recognise the forget class(es) on this data: its accuracy on their training images "
            f"is {before.forget_train_accuracy:.1f}% before unlearning (at most {threshold:.1f}%, near chance for "
            f"{classes} classes). Check that the dataset is the one the model was trained on and that its labels "
            "match the model's label names (--match_labels_by_id takes the dataset's ids as the model's)."
        )


def collapsed_classes(outputs_before: dict, outputs_after: dict, forget_classes: Sequence[int], names: Sequence[str],
                      drop: float) -> list[dict] | None:
    """The retained classes whose test accuracy (forget and retain test images together, in the model's ids) fell by
    more than `drop` points, the largest fall first; None without test images."""
    tests = [name for name in ("forget_test", "retain_test") if name in outputs_after and name in outputs_before]
    if not tests:
        return None
    accuracy = {}
    for when, outputs in (("before", outputs_before), ("after", outputs_after)):
        logits, labels = (torch.cat(parts) for parts in zip(*(outputs[name] for name in tests)))
        accuracy[when] = per_class_accuracy(logits, labels, len(names))
    forget = {int(c) for c in forget_classes}
    found = [{"id": c, "name": names[c], "before": before, "after": after}
             for c, (before, after) in enumerate(zip(accuracy["before"], accuracy["after"]))
             if c not in forget and before is not None and after is not None and before - after > drop]
    return sorted(found, key=lambda item: (item["after"] - item["before"], item["id"]))


def unlearn(
    model: nn.Module,
    config: PBUConfig,
    splits: dict[str, Dataset],
    forget_classes: Sequence[int],
    resume_from_checkpoint: str | bool | None = None,
    eval_split: str | None = "test",
    eval_holdout_fraction: float = 0.0,
    save: bool = False,
    card_kwargs: dict | None = None,
    **trainer_kwargs,
) -> tuple[PBUTrainer, UnlearningResults]:
    """Run PBU on `splits["forget_train"]` and return the trainer and the run's results (also kept as
    `trainer.unlearning_results`, which its model card reads).

    `splits` holds transformed datasets (`pixel_values`, `labels`): forget_train, forget_test, retain_test and
    optionally retain_train (the attack's members); `eval_split` names the split the test sets come from (with
    `eval_holdout_fraction` when held out of the training split), for the results. The trainer is built first so
    that both measurements run on the training device, with its accelerator; the "before" one also checks, before
    the Fisher is computed, that the model recognises the class it is asked to forget. Each split is measured once
    before and once after (the forget set's "after" is the trainer's own last measurement of it), and
    `results.forgotten` is judged on it (`hf_pbu.stopping.is_forgotten`).

    One pass: with `save`, the model is written to `output_dir` as soon as it is trained, before anything optional
    runs; then, on the main process, the evidence (`hf_pbu.evidence.collect_evidence`: the per-class chart in
    `output_dir`, the attacks on the original model and the unlearned one), whose failure is logged and kept in
    `results.evidence_error` without losing the trained model; and last, once, the card and the results file
    (`card_kwargs` go to `create_model_card`) with whatever the optional steps produced. `trainer_kwargs` go to
    `PBUTrainer` (e.g. `base_model_id`, `base_card`, `class_names`).
    """
    trainer = PBUTrainer(model=model, args=config, train_dataset=splits["forget_train"],
                         forget_classes=list(forget_classes), **trainer_kwargs)

    def measure_now(known: dict | None = None) -> tuple[Measurement, dict]:
        return measure(trainer.model, splits, config.per_device_eval_batch_size, trainer.accelerator,
                       config.dataloader_num_workers, config.seed, return_outputs=True, known_outputs=known)

    before, outputs_before = measure_now()
    check_model_knows_forget_classes(before, num_classes(trainer.model))
    model = trainer.unwrapped()
    original = copy.deepcopy(model) if trainer.is_world_process_zero() else None  # the attacks' "before" model
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    if save:  # the trained model is safe before anything optional runs
        trainer.save_model(_internal_call=True)  # as `push_to_hub` saves: `Trainer.save_model` would also push
    final = trainer.final_forget_train
    after, outputs_after = measure_now({"forget_train": (final.logits, final.labels)})
    results = dataclasses.replace(trainer.unlearning_results, before=before, after=after, eval_split=eval_split,
                                  eval_holdout_fraction=eval_holdout_fraction)
    names = trainer.known_class_names or [str(c) for c in range(num_classes(model))]
    results.retained_drop_warning = config.retained_drop_warning
    results.collapsed_classes = collapsed_classes(outputs_before, outputs_after, forget_classes, names,
                                                  config.retained_drop_warning)
    if results.collapsed_classes and trainer.is_world_process_zero():
        logger.warning(results.collapsed_text() + " Forgetting the class cost them: check the card's per-class chart, "
                       "and rerun with a lower --learning_rate or --alpha into a new --output_dir.")
    trainer.unlearning_results = results
    if trainer.is_world_process_zero():
        start = time.perf_counter()
        try:
            results.evidence = collect_evidence(
                original, model, splits, {"before": outputs_before, "after": outputs_after}, list(forget_classes),
                names, config.output_dir, config.evidence, config.seed)
            results.evidence["seconds"] = time.perf_counter() - start
        except Exception as err:  # optional: the model is unlearned and saved whatever fails here
            trainer.evidence_failure = err
            results.evidence_error = f"{type(err).__name__}: {err}"
            logger.error(f"The evidence step failed after unlearning ({results.evidence_error}); the unlearned model "
                         "is kept. The results record the error.")
            logger.debug("Where the evidence step failed:", exc_info=True)
    if save:
        trainer.create_model_card(**(card_kwargs or {}))
    return trainer, results
