"""Plain cross-entropy training of an image classifier with `transformers.Trainer`, for either model family.

Used to build the demo/benchmark base models and the retrain baseline; timm models return bare logits and take
a positional tensor, so the loss is computed here rather than by the model.
"""

import dataclasses

import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from hf_pbu.models import classifier_logits


class ClassifierTrainer(Trainer):
    """`Trainer` whose loss is the cross-entropy of `classifier_logits(model, pixel_values)`, label-smoothed by
    `args.label_smoothing_factor` (applied here: Trainer's own label smoother needs a transformers `model.config`)."""

    def __init__(self, model=None, args: TrainingArguments | None = None, **kwargs):
        self.label_smoothing = args.label_smoothing_factor if args is not None else 0.0
        if self.label_smoothing:
            args = dataclasses.replace(args, label_smoothing_factor=0.0)
        super().__init__(model=model, args=args, **kwargs)
        self.loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = classifier_logits(model, inputs["pixel_values"])
        loss = F.cross_entropy(logits.float(), inputs["labels"], label_smoothing=self.label_smoothing)
        return (loss, {"logits": logits}) if return_outputs else loss
