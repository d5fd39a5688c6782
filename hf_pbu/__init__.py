"""hf-pbu: class unlearning for Hugging Face image classifiers with Partially Blinded Unlearning.

The package, room by room: `config` and `trainer` (`PBUConfig`, `PBUTrainer`, as TRL pairs a config and a trainer),
`stopping` (when a run ends, and whether it forgot), `unlearning` (one measured run), `results`; `objective/` (the
forget terms, the anchor penalty, the Fisher, the refit forget rows); `evidence/` (measurements, membership inference,
the attacks that read what the weights still hold); `io/` (whole-or-nothing files, checkpoints, caches, the output
folder's lock, the model card and the push); `data/` and `models` (what a run reads); `cli/` (the `hf-pbu unlearn`
command).
"""

from .config import PBUConfig
from .failures import NonFiniteLossError, UnlearningFailedError
from .objective.fisher import compute_fisher_diagonal
from .results import Measurement, UnlearningResults
from .trainer import ForgetStopCallback, PBUTrainer
from .unlearning import unlearn
from .version import __version__

__all__ = [
    "ForgetStopCallback",
    "Measurement",
    "NonFiniteLossError",
    "PBUConfig",
    "PBUTrainer",
    "UnlearningFailedError",
    "UnlearningResults",
    "__version__",
    "compute_fisher_diagonal",
    "unlearn",
]
