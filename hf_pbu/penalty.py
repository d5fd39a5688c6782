"""The PBU anchor penalty sum_i w_i (theta_i - theta*_i)^2 with the fused weight w = beta * F + gamma."""

import torch
from torch import nn


class AnchorPenalty:
    """Holds theta* and w as flat fp32 vectors, outside the model (so outside `state_dict` and checkpoints) and
    outside the optimizer, aligned with the model's trainable parameters by name.

    One call flattens the current parameters into a single vector, so the value and its gradient
    2 * w * (theta - theta*) take a handful of kernels whatever the number of parameter tensors.
    """

    def __init__(self, model: nn.Module, fisher: dict[str, torch.Tensor], beta: float, gamma: float):
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        missing = [name for name, _ in named if name not in fisher]
        if missing:
            raise ValueError(f"The Fisher has no entry for parameters {missing[:5]}: was it computed on this model?")
        self.names = [name for name, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.gamma = gamma
        self.anchor = torch.cat([p.detach().float().reshape(-1) for _, p in named]).clone()
        self.weight = torch.cat([(beta * fisher[name].float() + gamma).reshape(-1).to(p.device) for name, p in named])

    def __call__(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum w * d^2, sum d^2) for the unwrapped `model`; only the first carries gradients."""
        params = dict(model.named_parameters())
        flat = torch.cat([params[name].reshape(-1) for name in self.names]).float()
        delta = flat - self.anchor
        squared = delta * delta
        return torch.dot(self.weight, squared), squared.detach().sum()

    def anchors(self) -> dict[str, torch.Tensor]:
        """theta* by parameter name (views into the flat vector)."""
        return self._unflatten(self.anchor)

    def weights(self) -> dict[str, torch.Tensor]:
        """w = beta * F + gamma by parameter name (views into the flat vector)."""
        return self._unflatten(self.weight)

    def _unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        sizes = [shape.numel() for shape in self.shapes]
        chunks = flat.split(sizes)
        return {name: chunk.view(shape) for name, chunk, shape in zip(self.names, chunks, self.shapes)}
