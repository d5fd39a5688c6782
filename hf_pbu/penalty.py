"""The PBU anchor penalty sum_i w_i (theta_i - theta*_i)^2 with the fused weight w = beta * F + gamma."""

import torch
from torch import nn


class _WeightedSquaredDistance(torch.autograd.Function):
    """(sum_i w_i d_i^2, sum_i d_i^2) with d = theta - theta*, over lists of tensors with `torch._foreach` kernels;
    the backward is one multiply of the saved w d."""

    @staticmethod
    def forward(ctx, anchors: list[torch.Tensor], weights: list[torch.Tensor], *params: torch.Tensor):
        deltas = torch._foreach_sub([p.float() for p in params], anchors)
        weighted = torch._foreach_mul(deltas, weights)
        value = torch.stack([torch.dot(wd.view(-1), d.view(-1)) for wd, d in zip(weighted, deltas)]).sum()
        squared = torch.stack(torch._foreach_norm(deltas)).square().sum()
        ctx.save_for_backward(*weighted)
        ctx.dtypes = [p.dtype for p in params]
        ctx.mark_non_differentiable(squared)
        return value, squared

    @staticmethod
    def backward(ctx, grad_value: torch.Tensor, grad_squared: torch.Tensor):
        gradients = torch._foreach_mul(ctx.saved_tensors, 2 * grad_value)
        return None, None, *(g.to(dtype) for g, dtype in zip(gradients, ctx.dtypes))


class AnchorPenalty:
    """Holds theta* and w as flat fp32 vectors, outside the model (so outside `state_dict` and checkpoints) and
    outside the optimizer, aligned with the model's trainable parameters by name.

    A call runs a handful of multi-tensor (`torch._foreach`) kernels over per-parameter views of those vectors and
    never concatenates the parameters: on the digits ResNet-18 (CPU) that more than halves the step overhead of a
    version that flattens them into one vector per call (benchmarks/RESULTS.md, "Speed (issue 6)").
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
        self._anchor_views = list(self.anchors().values())
        self._weight_views = list(self.weights().values())

    def __call__(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum w * d^2, sum d^2) for the unwrapped `model`; only the first carries gradients."""
        params = dict(model.named_parameters())
        return _WeightedSquaredDistance.apply(self._anchor_views, self._weight_views, *(params[n] for n in self.names))

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
