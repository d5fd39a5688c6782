"""hf-pbu: class unlearning for Hugging Face image classifiers with Partially Blinded Unlearning."""

__version__ = "0.1.0"  # first: `hf_pbu.publish` reads it while the package imports

from .config import PBUConfig  # noqa: E402
from .failures import NonFiniteLossError, UnlearningFailedError  # noqa: E402
from .fisher import compute_fisher_diagonal  # noqa: E402
from .results import Measurement, UnlearningResults  # noqa: E402
from .trainer import ForgetStopCallback, PBUTrainer  # noqa: E402
from .unlearning import unlearn  # noqa: E402

__all__ = [
    "ForgetStopCallback",
    "Measurement",
    "NonFiniteLossError",
    "PBUConfig",
    "PBUTrainer",
    "UnlearningFailedError",
    "UnlearningResults",
    "compute_fisher_diagonal",
    "unlearn",
]
