"""PBU itself behind the baselines' interface: `PBUTrainer` on the forget data alone (Panda, Sourav and Prathosh,
"Partially Blinded Unlearning: Class Unlearning for Deep Networks a Bayesian Perspective", AAAI 2025,
arXiv:2403.16246)."""

from torch import nn
from torch.utils.data import Dataset

from hf_pbu.config import PBUConfig
from hf_pbu.trainer import PBUTrainer

DATA_NEEDED = "forget only"
REFERENCE = "Panda, Sourav and Prathosh, AAAI 2025, arXiv:2403.16246 (PBU)"


def unlearn(model: nn.Module, forget_train: Dataset, retain_train: Dataset | None, config: PBUConfig) -> nn.Module:
    trainer = PBUTrainer(model=model, args=config, train_dataset=forget_train)
    trainer.train()
    return trainer.model
