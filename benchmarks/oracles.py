"""The retrain oracle of a benchmark cell, trained once and cached: the attacks of issue 20 read every method against
the oracle's own figures, so its model (not only its accuracy) is needed again and again.

    outputs/oracles/<base model folder>/<cell>-seed<seed>/   (timm Hub layout, plus oracle.json: training seconds)
"""

import json
import os
import time

import timm
from baselines import METHODS
from timm.models import save_for_hf
from torch import nn
from torch.utils.data import Dataset

ORACLE_ROOT = "outputs/oracles"


def oracle_dir(base_model_dir: str, cell: int | str, seed: int) -> str:
    return os.path.join(ORACLE_ROOT, os.path.basename(os.path.normpath(base_model_dir)), f"{cell}-seed{seed}")


def cached_oracle(base_model: nn.Module, base_model_dir: str, retain_train: Dataset, cell: int | str, seed: int,
                  recipe) -> tuple[nn.Module, float]:
    """(the oracle of `cell`, the seconds its training took): retrained with `recipe(seed)` on `retain_train` the
    first time, read back from its folder afterwards."""
    folder = oracle_dir(base_model_dir, cell, seed)
    info = os.path.join(folder, "oracle.json")
    if not os.path.exists(info):
        method = METHODS["retrain"]
        start = time.perf_counter()
        model = method.unlearn(base_model, None, retain_train, method.config_class(training_args=recipe(seed),
                                                                                   seed=seed))
        seconds = time.perf_counter() - start
        with open(os.path.join(base_model_dir, "config.json")) as f:
            model_args = json.load(f).get("model_args")
        save_for_hf(model.cpu().eval(), folder, model_args=model_args, safe_serialization=True)
        with open(info, "w") as f:
            json.dump({"seconds": seconds, "cell": cell, "seed": seed, "base_model_dir": base_model_dir}, f)
    with open(info) as f:
        seconds = json.load(f)["seconds"]
    return timm.create_model(f"local-dir:{folder}", pretrained=True).eval(), seconds
