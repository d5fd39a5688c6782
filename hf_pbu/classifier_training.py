"""Plain cross-entropy training of an image classifier with `transformers.Trainer`, for either model family.

Used to build the demo/benchmark base models and the retrain baseline; timm models return bare logits and take
a positional tensor, so the loss is computed here rather than by the model.
"""

import torch.nn.functional as F
from transformers import Trainer

from .models import classifier_logits


class ClassifierTrainer(Trainer):
    """`Trainer` whose loss is the cross-entropy of `classifier_logits(model, pixel_values)`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = classifier_logits(model, inputs["pixel_values"])
        loss = F.cross_entropy(logits.float(), inputs["labels"])
        return (loss, {"logits": logits}) if return_outputs else loss
