"""hf-pbu: class unlearning for Hugging Face image classifiers with Partially Blinded Unlearning."""

from .config import PBUConfig
from .fisher import compute_fisher_diagonal
from .trainer import ForgetStopCallback, NonFiniteLossError, PBUTrainer

__all__ = ["ForgetStopCallback", "NonFiniteLossError", "PBUConfig", "PBUTrainer", "compute_fisher_diagonal"]
__version__ = "0.1.0"
