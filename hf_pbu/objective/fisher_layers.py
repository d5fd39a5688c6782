"""The Fisher diagonal's per-layer closed forms: sums of squared per-image gradients, layer by layer, from one
*batched* backward pass per direction (`hf_pbu.objective.fisher` runs them, and the general per-image path for the
rest).

With normalisation layers on running statistics (eval mode) the images of a batch do not interact, so the backward
of sum_b v_b . z_b hands every layer the gradient g_b of its output for every image b at once. A layer's per-image
weight gradient is a sum over output positions p of outer products g_bp a_bp^T (a: the layer's input, unfolded for
convolutions), and its square summed over images is formed without keeping every per-image gradient:
    few positions:  sum_b (sum_p g_bp a_bp^T)^2 = sum_b sum_{p<=q} c_pq (g_bp g_bq)(a_bp a_bq)^T, one GEMM whose
                    activation side is built once per batch (P = 1, a Linear layer on pooled features, is the
                    closed form sum_b (g_b^2)(a_b^2)^T);
    many positions: per-image gradients in chunks of images (batched GEMM), squared and summed.
Grouped and depthwise convolutions never unfold (a 7x7 depthwise unfold is 49 times the activation): their per-image
weight gradient is the correlation of the input with the output gradient, one convolution with the images folded
into its groups. Norm layers (torch's and timm's LayerNorm, LayerNorm2d over the channels of NCHW) take per-image
sums of g * xhat (weight) and g (bias); a bare scale parameter used once as `x * gamma` (timm ConvNeXtBlock's
`gamma`, LayerScale) takes sums of g * x, found by watching the forward's torch functions. Only exact module types are
handled (a subclass may use its parameters differently); every other parameter is left to the caller's general
per-image path. Directions that are zero for every image of the batch cost no backward.
"""

from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm as TimmLayerNorm
from timm.layers import LayerNorm2d
from torch import nn
from torch.overrides import TorchFunctionMode

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

# Twice the outputs of every module: what autograd keeps for the backward plus the operations between modules and
# the gradients in flight (measured on timm convnext_atto, benchmarks/bench_fisher_memory.py).
ACTIVATION_FACTOR = 2

# Layer norms over the trailing dimensions; timm's LayerNorm only adds an optional fused kernel of the same function.
LAST_DIMS_NORM_TYPES = (nn.LayerNorm, TimmLayerNorm)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, LayerNorm2d, *LAST_DIMS_NORM_TYPES)
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


def _on_gradient(output: torch.Tensor, hook: Callable[[torch.Tensor], None]) -> None:
    """Call `hook` with the gradient of `output` as the node that computed it receives it: unlike a tensor hook, not
    moved by a later in-place change of the tensor (timm's LayerScale(inplace=True) scales a Linear's output). A
    reshaped view (a Linear's output on >2-D input) is followed to its base, whose node an in-place change keeps."""
    source = output
    if output._is_view() and output._base.numel() == output.numel() and output.is_contiguous():
        source = output._base
    index, shape = source.output_nr, output.shape
    source.grad_fn.register_hook(lambda grad_inputs, grad_outputs: hook(grad_outputs[index].reshape(shape)))


def _grouped(module: nn.Module) -> bool:
    """A grouped or depthwise convolution: its weight gradient comes from a convolution, never from an unfold."""
    return isinstance(module, nn.Conv2d) and module.groups > 1


class _Tap:
    """The per-batch state of one handled layer: its input (from the forward hook), the gradients of its output
    (from a hook on the node that computed it, once per direction) and the running sums of squared per-image
    parameter gradients."""

    def __init__(self, module: nn.Module, sums: dict[str, torch.Tensor], batch_size: int, pending_budget: int):
        self.module = module
        self.batch_size = batch_size
        self.pending_budget = pending_budget
        self.sums = sums  # local name ("weight"/"bias") -> accumulator, for the trainable parameters only
        self.dtype = next(iter(sums.values())).dtype
        self.calls = 0
        self.gradients = 0  # hook calls: one per backward pass once the tap is known to be called
        self.usable = True
        self.inputs: torch.Tensor | None = None  # [B, G, P, In] (ungrouped weighted layers), x (grouped), xhat (norms)
        self.pending: list[torch.Tensor] = []  # output gradients, one per direction

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
                self.inputs = x if _grouped(module) else _positions(module, x, unfold=True)
        _on_gradient(output, self.backward_hook)

    @property
    def covered(self) -> bool:
        """Whether the sums are complete: called exactly once per forward, batch first."""
        return self.usable and self.calls == 1

    def backward_hook(self, grad: torch.Tensor) -> None:
        self.gradients += 1
        if not self.covered:
            return
        grad = grad.detach().to(self.dtype)
        if isinstance(self.module, NORM_TYPES):
            dims = _reduced_dims(self.module, grad)
            per_image = (lambda t: t.sum(dims)) if dims else (lambda t: t)  # sum(()) would sum everything
            self._add("weight", lambda: per_image(grad * self.inputs).square().sum(0))
            self._add("bias", lambda: per_image(grad).square().sum(0))
            return
        g = grad if _grouped(self.module) else _positions(self.module, grad, unfold=False)
        self._add("bias", lambda: (g.flatten(2).sum(2) if _grouped(self.module) else g.sum(2)).square().sum(0))
        if "weight" in self.sums:
            self.pending.append(g)
            if sum(t.numel() * t.element_size() for t in self.pending) > self.pending_budget:
                self.flush()

    def flush(self) -> None:
        """Fold the pending output gradients into the weight's sum."""
        if self.pending and self.covered:
            if _grouped(self.module):
                self._add("weight", lambda: _grouped_conv_weight_squares(self.module, self.pending, self.inputs))
            else:
                self._add("weight", lambda: _weight_squares(self.pending, self.inputs))
        self.pending = []

    def _add(self, name: str, value) -> None:
        if name in self.sums:
            self.sums[name] += value().reshape(self.sums[name].shape)


class _ScaleTap:
    """A bare parameter used once as an elementwise scale of a batch-first tensor, out = x * gamma (timm
    ConvNeXtBlock's `gamma`, LayerScale): its per-image gradient is the sum of g * x over the dimensions gamma is
    broadcast along (g: the gradient of `out`)."""

    def __init__(self, param: nn.Parameter, batch_size: int, dtype: torch.dtype):
        self.param = param
        self.batch_size = batch_size
        self.sum = torch.zeros(param.shape, dtype=dtype, device=param.device)
        self.uses = 0
        self.gradients = 0
        self.usable = True
        self.inputs: torch.Tensor | None = None
        self.dims: tuple[int, ...] = ()

    @property
    def covered(self) -> bool:
        return self.usable and self.uses == 1

    def record(self, x: torch.Tensor, scale: torch.Tensor, inplace: bool) -> bool:
        """Keep x for `x * scale` (`scale` a view of the parameter), if the product scales each image alike."""
        self.uses += 1
        shape = (1,) * (x.dim() - scale.dim()) + tuple(scale.shape)
        self.usable &= (
            x.dim() >= 2 and len(shape) == x.dim() and x.shape[0] == self.batch_size and shape[0] == 1
            and torch.broadcast_shapes(x.shape, shape) == x.shape
        )
        if self.usable:
            self.dims = tuple(d for d in range(1, x.dim()) if shape[d] == 1)
            self.inputs = x.detach().to(self.sum.dtype, copy=inplace)  # x.mul_(gamma) overwrites x
        return self.usable

    def backward_hook(self, grad: torch.Tensor) -> None:
        self.gradients += 1
        if self.covered:
            per_image = grad.detach().to(self.sum.dtype) * self.inputs
            per_image = per_image.sum(self.dims) if self.dims else per_image
            self.sum += per_image.reshape(self.batch_size, -1).square().sum(0).reshape(self.sum.shape)


class _ScaleWatcher(TorchFunctionMode):
    """Follows candidate scale parameters through the forward pass: a reshape or view of one is followed, its product
    with another tensor is recorded (and that product's gradient hooked); any other use (a sum, a convolution, a
    second product) leaves the parameter to the general path."""

    VIEWS = (torch.Tensor.reshape, torch.Tensor.view, torch.reshape)
    PRODUCTS = (torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.Tensor.mul_)

    def __init__(self, taps: list[_ScaleTap]):
        super().__init__()
        # tensor id -> (the tensor, kept so that its id is not reused; its tap)
        self.views = {id(tap.param): (tap.param, tap) for tap in taps}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") == "__get__":  # .shape, .dtype, ...
            return func(*args, **kwargs)
        tracked = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if id(t) in self.views]
        if not tracked:
            return func(*args, **kwargs)
        tap = self.views[id(tracked[0])][1]
        if func in self.VIEWS and len(tracked) == 1 and args[0] is tracked[0]:
            out = func(*args, **kwargs)
            self.views[id(out)] = (out, tap)
            return out
        if func in self.PRODUCTS and len(tracked) == 1 and len(args) == 2 and not kwargs:
            scale = tracked[0]
            x = args[1] if args[0] is scale else args[0]
            inplace = func is torch.Tensor.mul_
            if isinstance(x, torch.Tensor) and not (inplace and args[0] is scale) and tap.record(x, scale, inplace):
                out = func(*args, **kwargs)
                _on_gradient(out, tap.backward_hook)
                return out
        tap.usable = False
        return func(*args, **kwargs)


def _reduced_dims(module: nn.Module, grad: torch.Tensor) -> tuple[int, ...]:
    """The dimensions a norm layer's per-image parameter gradient sums over: all but the batch and the normalised
    trailing ones (LayerNorm), or all but the batch and the channels (BatchNorm, GroupNorm, LayerNorm2d)."""
    if type(module) in LAST_DIMS_NORM_TYPES:
        return tuple(range(1, grad.dim() - len(module.normalized_shape)))
    return tuple(range(2, grad.dim()))


def _normalised(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The normalised input xhat that the norm layer's weight multiplies."""
    if type(module) in LAST_DIMS_NORM_TYPES:
        return F.layer_norm(x, module.normalized_shape, eps=module.eps)
    if isinstance(module, LayerNorm2d):
        return F.layer_norm(x.permute(0, 2, 3, 1), module.normalized_shape, eps=module.eps).permute(0, 3, 1, 2)
    if isinstance(module, nn.GroupNorm):
        return F.group_norm(x, module.num_groups, eps=module.eps)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean = module.running_mean.to(x.dtype).view(shape)
    var = module.running_var.to(x.dtype).view(shape)
    return (x - mean) * torch.rsqrt(var + module.eps)


def _positions(module: nn.Module, x: torch.Tensor, unfold: bool) -> torch.Tensor:
    """An ungrouped weighted layer's input (`unfold`, im2col for convolutions) or output gradient as
    [B, 1, P, features]: the per-image weight gradient is sum_p g_p^T a_p."""
    batch = x.shape[0]
    if not isinstance(module, nn.Conv2d):
        return x.reshape(batch, 1, -1, x.shape[-1])
    if unfold:
        x = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
    return x.reshape(batch, 1, x.shape[1], -1).transpose(-1, -2)
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



def _grouped_conv_weight_squares(conv: nn.Conv2d, grads: list[torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    """sum over images and directions of the squared per-image weight gradient of a grouped or depthwise conv.

    With the images folded into the groups ([1, B*In, H, W] input, B*groups groups), autograd's own weight-gradient
    kernel gives every image's gradient at once, in the memory of the activation and of B copies of the weight,
    where an unfold would take kh*kw times the activation."""
    batch, (height, width) = inputs.shape[0], inputs.shape[2:]
    out_channels, in_per_group = conv.out_channels, conv.in_channels // conv.groups
    per_image = 2 * out_channels * in_per_group * conv.kernel_size[0] * conv.kernel_size[1] * inputs.element_size()
    chunk = max(1, min(batch, CHUNK_BUDGET_BYTES // per_image))
    total = torch.zeros_like(conv.weight, dtype=inputs.dtype)
    for start in range(0, batch, chunk):
        x = inputs[start : start + chunk]
        images = len(x)
        x = x.reshape(1, -1, height, width)
        weight = x.new_empty(images * out_channels, in_per_group, *conv.kernel_size)  # its shape is all that is read
        for g in grads:
            g = g[start : start + chunk].reshape(1, images * out_channels, *g.shape[2:])
            _, per_image_grads, _ = torch.ops.aten.convolution_backward(
                g, x, weight, None, conv.stride, conv.padding, conv.dilation, False, [0, 0], images * conv.groups,
                [False, True, False],
            )
            total += per_image_grads.view(images, *total.shape).square().sum(0)
    return total


def per_image_bytes(model: nn.Module, image: torch.Tensor, logits_of: Callable) -> int:
    """An estimate of the memory that one more image adds to a batched pass of `squared_gradient_sums`:
    ACTIVATION_FACTOR times the outputs of every leaf module, plus what the taps keep of handled layers (the input,
    unfolded for ungrouped convolutions) in fp32 or wider."""
    tap_size = torch.promote_types(next(model.parameters()).dtype, torch.float32).itemsize
    total = 0

    def measure(module: nn.Module, args: tuple, output) -> None:
        nonlocal total
        if not isinstance(output, torch.Tensor):
            return
        total += ACTIVATION_FACTOR * output.numel() * output.element_size()
        if _handled(module) and isinstance(module, nn.Conv2d) and not _grouped(module):
            unfolded = module.in_channels * module.kernel_size[0] * module.kernel_size[1] * output[0, 0].numel()
            total += tap_size * unfolded
        elif _handled(module) and args and isinstance(args[0], torch.Tensor):
            total += tap_size * args[0].numel()

    leaves = [module for module in model.modules() if next(module.children(), None) is None]
    handles = [module.register_forward_hook(measure) for module in leaves]
    try:
        with torch.no_grad():
            logits_of(model, image[:1])
    finally:
        for handle in handles:
            handle.remove()
    return total


def squared_gradient_sums(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    images: torch.Tensor,
    directions_of: Callable[[torch.Tensor], torch.Tensor],
    logits_of: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    pending_budget: int = PENDING_BUDGET_BYTES,
) -> tuple[dict[str, torch.Tensor], list[str], torch.Tensor]:
    """sum over images b and directions k of (J_b^T v_bk)^2 for the parameters of handled layers and scales.

    `directions_of(logits)` gives the directions [B, K, classes] from the (detached) logits of this forward pass.
    Returns the sums by parameter name, the names of the `params` it did not cover (other layer types, layers not
    called exactly once per forward, parameters held by two modules), which the caller computes another way, and
    the directions. `pending_budget` bounds the output gradients each layer keeps across directions. The model must
    be in eval mode, with no norm layer coupling the images (`batch_coupling_modules`).
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
            taps[module_name] = _Tap(module, sums, len(images), pending_budget)
    in_taps = {id(p) for tap in taps.values() for p in tap.module._parameters.values() if p is not None}
    scales = [_ScaleTap(p, len(images), dtype) for p in params.values() if id(p) not in in_taps and owners[id(p)] == 1]
    handles = [model.get_submodule(name).register_forward_hook(tap.forward_hook) for name, tap in taps.items()]
    try:
        with torch.enable_grad():
            leaf = images.detach().requires_grad_(True)
            with _ScaleWatcher(scales) if scales else nullcontext():  # the watcher costs a call per operation
                logits = logits_of(model, leaf)
            directions = directions_of(logits.detach()).to(logits.dtype)
            active = directions.flatten(2).any(-1).any(0).nonzero().flatten().tolist()  # zero for every image: no use
            for k in active:
                torch.autograd.grad(logits, leaf, directions[:, k], retain_graph=k != active[-1])
        for tap in [*taps.values(), *scales]:
            tap.usable &= tap.gradients == len(active)  # a hook that missed a pass: left to the general path
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
    sums.update({by_id[id(scale.param)]: scale.sum for scale in scales if scale.covered})
    return sums, [name for name in params if name not in sums], directions
