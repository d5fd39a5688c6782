"""Sums of squared per-image gradients, layer by layer, from one *batched* backward pass per direction.

With normalisation layers on running statistics (eval mode) the images of a batch do not interact, so the backward
of sum_b v_b . z_b hands every layer the gradient g_b of its output for every image b at once. A layer's per-image
weight gradient is a sum over output positions p of outer products g_bp a_bp^T (a: the layer's input, unfolded for
convolutions), and its square summed over images is formed without keeping every per-image gradient:
    few positions:  sum_b (sum_p g_bp a_bp^T)^2 = sum_b sum_{p<=q} c_pq (g_bp g_bq)(a_bp a_bq)^T, one GEMM whose
                    activation side is built once per batch (P = 1, a Linear layer on pooled features, is the
                    closed form sum_b (g_b^2)(a_b^2)^T);
    many positions: per-image gradients in chunks of images (batched GEMM), squared and summed.
Norm layers take per-image sums of g * xhat (weight) and g (bias). Only exact module types are handled (a subclass
may use its parameters differently); every other parameter is left to the caller's general per-image path.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# Cost model (per image) choosing between the two forms, in multiply-adds, with an elementwise memory-bound
# operation counted as this many (measured on CPU with the digits ResNet-18):
#   per-image gradients: K (P Out In + c Out In)     (batched GEMM, then squaring and summing)
#   pairs:               Pp (Out In + c K Out + c In) (one GEMM, after the pair products of both sides)
# for K directions, P positions, Pp = P(P+1)/2 pairs.
PER_IMAGE_GRADIENT_MEMORY_COST = 8
# Output gradients of one layer kept across directions before they are folded in; bounds the extra memory.
PENDING_BUDGET_BYTES = 1 << 26
# Upper bound on the memory of one chunk of per-image gradients of one layer.
CHUNK_BUDGET_BYTES = 1 << 26

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)
SUPPORTED_TYPES = (nn.Linear, nn.Conv2d, *NORM_TYPES)


def batch_coupling_modules(model: nn.Module) -> list[str]:
    """Norm layers that use batch statistics even in eval mode (no running statistics): images interact, so the
    batched backward does not give per-image gradients."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is None
    ]


def _handled(module: nn.Module) -> bool:
    if type(module) not in SUPPORTED_TYPES:
        return False
    if isinstance(module, nn.Conv2d):
        return module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return True


class _Tap:
    """The per-batch state of one handled layer: its input (from the forward hook), the gradients of its output
    (from a tensor hook, once per direction) and the running sums of squared per-image parameter gradients."""

    def __init__(self, module: nn.Module, sums: dict[str, torch.Tensor], batch_size: int):
        self.module = module
        self.batch_size = batch_size
        self.sums = sums  # local name ("weight"/"bias") -> accumulator, for the trainable parameters only
        self.dtype = next(iter(sums.values())).dtype
        self.calls = 0
        self.usable = True
        self.inputs: torch.Tensor | None = None  # [B, G, P, In] for weighted layers, xhat for norm layers
        self.pending: list[torch.Tensor] = []  # output gradients [B, G, P, Out], one per direction

    def forward_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.calls += 1
        batch_first = args[0].shape[0] == self.batch_size
        if not (isinstance(output, torch.Tensor) and output.requires_grad and batch_first):
            self.usable = False
        if self.calls > 1 or not self.usable:  # a second call (shared weights) as well: left to the general path
            self.usable = False
            self.inputs = None
            self.pending.clear()
            return
        with torch.no_grad():
            x = args[0].detach().to(self.dtype)
            if isinstance(module, NORM_TYPES):
                self.inputs = _normalised(module, x)
            elif "weight" in self.sums:
                self.inputs = _positions(module, x, unfold=True)
        output.register_hook(self.backward_hook)

    @property
    def covered(self) -> bool:
        """Whether the sums are complete: called exactly once per forward, batch first."""
        return self.usable and self.calls == 1

    def backward_hook(self, grad: torch.Tensor) -> None:
        if not self.covered:
            return
        grad = grad.detach().to(self.dtype)
        if isinstance(self.module, NORM_TYPES):
            if isinstance(self.module, nn.LayerNorm):
                dims = tuple(range(1, grad.dim() - len(self.module.normalized_shape)))
            else:
                dims = tuple(range(2, grad.dim()))
            per_image = (lambda t: t.sum(dims)) if dims else (lambda t: t)  # sum(()) would sum everything
            self._add("weight", lambda: per_image(grad * self.inputs).square().sum(0))
            self._add("bias", lambda: per_image(grad).square().sum(0))
            return
        g = _positions(self.module, grad, unfold=False)
        self._add("bias", lambda: g.sum(2).square().sum(0))
        if "weight" in self.sums:
            self.pending.append(g)
            if sum(t.numel() * t.element_size() for t in self.pending) > PENDING_BUDGET_BYTES:
                self.flush()

    def flush(self) -> None:
        """Fold the pending output gradients into the weight's sum."""
        if self.pending and self.covered:
            self._add("weight", lambda: _weight_squares(self.pending, self.inputs))
        self.pending = []

    def _add(self, name: str, value) -> None:
        if name in self.sums:
            self.sums[name] += value().reshape(self.sums[name].shape)


def _normalised(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The normalised input xhat that the norm layer's weight multiplies."""
    if isinstance(module, nn.LayerNorm):
        return F.layer_norm(x, module.normalized_shape, eps=module.eps)
    if isinstance(module, nn.GroupNorm):
        return F.group_norm(x, module.num_groups, eps=module.eps)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean = module.running_mean.to(x.dtype).view(shape)
    var = module.running_var.to(x.dtype).view(shape)
    return (x - mean) * torch.rsqrt(var + module.eps)


def _positions(module: nn.Module, x: torch.Tensor, unfold: bool) -> torch.Tensor:
    """A weighted layer's input (`unfold`, im2col for convolutions) or output gradient as [B, groups, P, features]:
    the per-image weight gradient is sum_p g_p^T a_p within each group."""
    batch = x.shape[0]
    if not isinstance(module, nn.Conv2d):
        return x.reshape(batch, 1, -1, x.shape[-1])
    if unfold:
        x = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
    return x.reshape(batch, module.groups, x.shape[1] // module.groups, -1).transpose(-1, -2)


def _pairs_are_cheaper(positions: int, directions: int, out_features: int, in_features: int) -> bool:
    """The cost model above."""
    pairs, cost = positions * (positions + 1) // 2, PER_IMAGE_GRADIENT_MEMORY_COST
    per_image_cost = directions * (positions + cost) * out_features * in_features
    return pairs * (out_features * in_features + cost * (directions * out_features + in_features)) <= per_image_cost


def _weight_squares(grads: list[torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    """sum over images b and directions k of (sum_p g_bkp^T a_bp)^2, as [groups, Out, In]."""
    positions, directions, out_features = inputs.shape[2], len(grads), grads[0].shape[-1]
    if _pairs_are_cheaper(positions, directions, out_features, inputs.shape[-1]):
        # (sum_p g_p a_p)^2 = sum_{p<=q} c_pq (g_p g_q)(a_p a_q): the directions fold into the g side first.
        first, second = torch.triu_indices(positions, positions, device=inputs.device)
        scale = torch.where(first == second, 1.0, 2.0).to(inputs.dtype).view(1, 1, -1, 1)
        g_pairs = sum(g[:, :, first] * g[:, :, second] for g in grads)
        a_pairs = inputs[:, :, first] * inputs[:, :, second] * scale
        return torch.einsum("bgko,bgki->goi", g_pairs, a_pairs)
    g = torch.stack(grads, 2).transpose(-1, -2)  # [B, G, K, Out, P]
    batch, groups = g.shape[:2]
    g = g.reshape(batch, groups, directions * out_features, positions)
    per_image = groups * directions * out_features * inputs.shape[-1] * g.element_size()
    chunk = max(1, min(batch, CHUNK_BUDGET_BYTES // per_image))
    total = None
    for start in range(0, batch, chunk):
        gradients = torch.matmul(g[start : start + chunk], inputs[start : start + chunk])
        squared = gradients.square_().sum(0).view(groups, directions, out_features, -1).sum(1)
        total = squared if total is None else total.add_(squared)
    return total


def squared_gradient_sums(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    images: torch.Tensor,
    directions_of: Callable[[torch.Tensor], torch.Tensor],
    logits_of: Callable[[nn.Module, torch.Tensor], torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str], torch.Tensor]:
    """sum over images b and directions k of (J_b^T v_bk)^2 for the parameters of handled layers.

    `directions_of(logits)` gives the directions [B, K, classes] from the (detached) logits of this forward pass.
    Returns the sums by parameter name, the names of the `params` it did not cover (other layer types, layers not
    called exactly once per forward, parameters held by two modules), which the caller computes another way, and
    the directions. The model must be in eval mode, with no norm layer coupling the images
    (`batch_coupling_modules`).
    """
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:  # a parameter that two modules hold is left to the general path
                owners[id(p)] = owners.get(id(p), 0) + 1
    dtype = torch.promote_types(next(iter(params.values())).dtype, torch.float32)
    by_id = {id(p): name for name, p in params.items()}
    taps: dict[str, _Tap] = {}
    for module_name, module in model.named_modules():
        if not _handled(module):
            continue
        local = {
            local_name: p
            for local_name, p in module._parameters.items()
            if p is not None and id(p) in by_id and owners[id(p)] == 1
        }
        if local:
            sums = {n: torch.zeros(p.shape, dtype=dtype, device=p.device) for n, p in local.items()}
            taps[module_name] = _Tap(module, sums, len(images))
    handles = [model.get_submodule(name).register_forward_hook(tap.forward_hook) for name, tap in taps.items()]
    try:
        with torch.enable_grad():
            leaf = images.detach().requires_grad_(True)
            logits = logits_of(model, leaf)
            directions = directions_of(logits.detach()).to(logits.dtype)
            count = directions.shape[1]
            for k in range(count):
                torch.autograd.grad(logits, leaf, directions[:, k], retain_graph=k < count - 1)
        for tap in taps.values():
            tap.flush()
    finally:
        for handle in handles:
            handle.remove()
    sums = {
        by_id[id(tap.module._parameters[local_name])]: value
        for tap in taps.values()
        if tap.covered
        for local_name, value in tap.sums.items()
    }
    return sums, [name for name in params if name not in sums], directions
