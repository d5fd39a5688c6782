"""PBU and the methods it is compared with, behind one interface (see `method.UnlearningMethod`).

Each module holds one method: `unlearn(model, forget_train, retain_train, config) -> model`, its config
dataclass, `DATA_NEEDED` and the paper it follows.
"""

from hf_pbu.config import PBUConfig

from . import bad_teaching, finetune, mask_logits, pbu, retrain, scrub, spotter, ssd, unsir
from .method import DataNeeded, UnlearningMethod

METHODS: dict[str, UnlearningMethod] = {
    method.name: method
    for method in (
        UnlearningMethod("pbu", pbu.unlearn, PBUConfig, pbu.DATA_NEEDED, pbu.REFERENCE),
        UnlearningMethod("retrain", retrain.unlearn, retrain.RetrainConfig, retrain.DATA_NEEDED, retrain.REFERENCE),
        UnlearningMethod("finetune", finetune.unlearn, finetune.FinetuneConfig, finetune.DATA_NEEDED,
                         finetune.REFERENCE),
        UnlearningMethod("unsir", unsir.unlearn, unsir.UNSIRConfig, unsir.DATA_NEEDED, unsir.REFERENCE),
        UnlearningMethod("bad_teaching", bad_teaching.unlearn, bad_teaching.BadTeachingConfig,
                         bad_teaching.DATA_NEEDED, bad_teaching.REFERENCE),
        UnlearningMethod("ssd", ssd.unlearn, ssd.SSDConfig, ssd.DATA_NEEDED, ssd.REFERENCE, deterministic=True),
        UnlearningMethod("scrub", scrub.unlearn, scrub.SCRUBConfig, scrub.DATA_NEEDED, scrub.REFERENCE),
        UnlearningMethod("mask_logits", mask_logits.unlearn, mask_logits.MaskLogitsConfig, mask_logits.DATA_NEEDED,
                         mask_logits.REFERENCE, deterministic=True),
        UnlearningMethod("spotter", spotter.unlearn, spotter.SpotterConfig, spotter.DATA_NEEDED, spotter.REFERENCE),
    )
}

__all__ = ["METHODS", "DataNeeded", "UnlearningMethod"]
