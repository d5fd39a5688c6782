"""The PBU anchor penalty sum_i w_i (theta_i - theta*_i)^2 with the fused weight w = beta * F + gamma."""

import torch
from torch import nn


class AnchorPenalty:
    """Holds theta* and w as flat fp32 vectors, outside the model (so outside `state_dict` and checkpoints) and
    outside the optimizer, aligned with the model's trainable parameters by name.

    Training needs only the penalty's gradient 2 w (theta - theta*), and it is linear in theta: `add_gradient_`
    adds it to the parameters' `.grad` in place, with two multi-tensor (`torch._foreach`) kernels and no temporary
    (grad += 2 w * theta, then grad -= 2 w * theta*, the second product kept from init). That moves ~7 parameter-
    sized arrays through memory per step, against ~14 plus three temporaries for autograd through the value
    (benchmarks/RESULTS.md, "Speed (issue 6)"). Rounding in the two products is that of moving theta* by an ulp.
    The value itself, for logs and evaluation, is `value`.
    """

    def __init__(self, model: nn.Module, fisher: dict[str, torch.Tensor], beta: float, gamma: float,
                 free: dict[str, torch.Tensor] | None = None):
        """`free`: boolean masks by parameter name of entries left out of the penalty (weight 0), e.g. the forget
        classes' head rows under `forget_level` "head" or "features"."""
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        missing = [name for name, _ in named if name not in fisher]
        if missing:
            raise ValueError(f"The Fisher has no entry for parameters {missing[:5]}: was it computed on this model?")
        self.names = [name for name, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.anchor = torch.cat([p.detach().float().reshape(-1) for _, p in named]).clone()
        free = free or {}

        def weight(name: str, p: torch.Tensor) -> torch.Tensor:
            w = (beta * fisher[name].float() + gamma).to(p.device)
            return w.masked_fill(free[name].to(p.device), 0.0) if name in free else w

        self.weight = torch.cat([weight(name, p).reshape(-1) for name, p in named])
        # Positions (in `names`) and masks of the parameters with free entries, left out of both sums of `value`.
        self._anchored = {i: (~free[name]).to(p.device) for i, (name, p) in enumerate(named) if name in free}
        if not torch.isfinite(self.anchor).all():
            raise ValueError("The model's weights are not finite before unlearning: load the model again.")
        if not all(torch.isfinite(fisher[name]).all() and (fisher[name] >= 0).all() for name in self.names):
            raise ValueError("The Fisher holds NaN, infinite or negative values: the penalty weights beta * F + gamma "
                             "would not be finite and non-negative. Compute it again (`fisher=None`).")
        if not torch.isfinite(self.weight).all():
            raise ValueError("The penalty weights beta * F + gamma are not finite: the Fisher is too large for this "
                             "beta.")
        self._anchor_views = list(self.anchors().values())
        self._weight_views = list(self.weights().values())
        self._offset_views = list(self._unflatten(2 * self.weight * self.anchor).values())  # 2 w theta*

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        params = dict(model.named_parameters())
        return [params[name] for name in self.names]

    @torch.no_grad()
    def value(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum w * d^2, sum d^2) with d = theta - theta*, for the unwrapped `model`, over the anchored entries; no
        gradient."""
        deltas = list(torch._foreach_sub([p.float() for p in self._params(model)], self._anchor_views))
        for i, anchored in self._anchored.items():  # entries left free count in neither sum
            deltas[i] = deltas[i] * anchored
        squared = torch.stack(torch._foreach_norm(deltas)).square().sum()
        torch._foreach_mul_(deltas, torch._foreach_sqrt(self._weight_views))
        return torch.stack(torch._foreach_norm(deltas)).square().sum(), squared

    @torch.no_grad()
    def moved(self, model: nn.Module) -> bool:
        """Whether any trainable parameter of the unwrapped `model` differs from theta* (exactly, not by a
        threshold: an update too small for the weights' precision leaves them equal)."""
        return any(not torch.equal(p.float(), a) for p, a in zip(self._params(model), self._anchor_views))

    @torch.no_grad()
    def add_gradient_(self, model: nn.Module, scale: float = 1.0) -> None:
        """`.grad += scale * 2 w (theta - theta*)` on the unwrapped `model`'s parameters (`scale`: a loss scale the
        other gradients carry, as fp16 mixed precision's)."""
        params = self._params(model)
        for p in params:
            if p.grad is None:  # a parameter the loss did not reach still feels the penalty
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        if all(p.dtype == torch.float32 and g.dtype == torch.float32 for p, g in zip(params, grads)):
            torch._foreach_addcmul_(grads, params, self._weight_views, value=2 * scale)
            torch._foreach_add_(grads, self._offset_views, alpha=-scale)
            return
        for p, g, a, w in zip(params, grads, self._anchor_views, self._weight_views):
            g.add_((2 * scale * w * (p.float() - a)).to(g.dtype))

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
