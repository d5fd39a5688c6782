"""The diagonal Fisher information of a classifier on the forget data.

For an image x with logits z(x) and softmax p, the score of class c is
    d log p_c / d theta = J^T (e_c - p),       J = dz/dtheta,
so every estimator is a sum of squared vector-Jacobian products J^T v with per-image "directions" v:
    exact      v_c = sqrt(p_c) (e_c - p) for every class c   (expectation over the model's own softmax)
    mc         v_s = (e_{y_s} - p) / sqrt(S), y_s ~ p        (S sampled labels)
    empirical  v   = e_y - p                                 (the true label)
The Fisher diagonal is the mean over images of sum_k (J^T v_k)^2: squares of *per-image* gradients, which is why
the gradients are computed per image (torch.func.vmap) and never from a batch-summed gradient.
"""

import hashlib
import os
import time
from collections.abc import Iterable

import torch
from huggingface_hub import constants as hub_constants
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call, vjp, vmap
from transformers.utils import logging

from .distributed import all_reduce_sum_, is_main_process
from .models import classifier_logits
from .modes import eval_mode

logger = logging.get_logger(__name__)

ESTIMATORS = ("exact", "mc", "empirical")
# Upper bound on the memory that the per-image gradients of one vmapped chunk may take.
PER_SAMPLE_GRAD_BUDGET_BYTES = 1 << 30


def score_directions(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    estimator: str,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Directions v (shape [batch, K, classes]) such that the Fisher of an image is sum_k (J^T v_k)^2."""
    probs = logits.detach().float().softmax(-1)
    num_classes = probs.shape[-1]
    if estimator == "exact":
        eye = torch.eye(num_classes, device=probs.device, dtype=probs.dtype)
        return probs.sqrt().unsqueeze(-1) * (eye - probs.unsqueeze(1))
    if estimator == "mc":
        sampled = torch.multinomial(probs.cpu(), mc_samples, replacement=True, generator=generator).to(probs.device)
        onehot = nn.functional.one_hot(sampled, num_classes).to(probs.dtype)
        return (onehot - probs.unsqueeze(1)) / mc_samples**0.5
    if estimator == "empirical":
        if labels is None:
            raise ValueError("The 'empirical' Fisher needs the true labels.")
        onehot = nn.functional.one_hot(labels.long(), num_classes).to(probs.dtype)
        return (onehot - probs).unsqueeze(1)
    raise ValueError(f"Unknown Fisher estimator {estimator!r}; choose one of {ESTIMATORS}.")


def _split_batch(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, dict):
        return batch["pixel_values"], batch.get("labels")
    return batch[0], (batch[1] if len(batch) > 1 else None)


def _squared_vjps_vmapped(model, params, buffers, images, directions) -> dict[str, torch.Tensor]:
    """sum over images and directions of (J^T v)^2, with per-image gradients from torch.func."""

    def one_image(image: torch.Tensor, image_directions: torch.Tensor) -> dict[str, torch.Tensor]:
        def logits_of(p):
            return classifier_logits_functional(model, p, buffers, image.unsqueeze(0)).squeeze(0)

        _, vjp_fn = vjp(logits_of, params)
        grads = vmap(vjp_fn)(image_directions)[0]
        return {name: grad.pow(2).sum(0) for name, grad in grads.items()}

    n_params = sum(p.numel() for p in params.values())
    per_image_bytes = 4 * n_params * (directions.shape[1] + 1)
    chunk = max(1, min(len(images), PER_SAMPLE_GRAD_BUDGET_BYTES // per_image_bytes))
    per_image = vmap(one_image, chunk_size=chunk)(images, directions)
    return {name: value.sum(0) for name, value in per_image.items()}


def classifier_logits_functional(model, params, buffers, pixel_values):
    output = functional_call(model, (params, buffers), (pixel_values,))
    return output if isinstance(output, torch.Tensor) else output.logits


def _squared_vjps_looped(model, params, images, directions) -> dict[str, torch.Tensor]:
    """Fallback for layers torch.func cannot vmap: one backward pass per image and direction."""
    names, tensors = list(params), [p for p in params.values()]
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    for image, image_directions in zip(images, directions):
        logits = classifier_logits(model, image.unsqueeze(0)).squeeze(0)
        for k, v in enumerate(image_directions):
            grads = torch.autograd.grad(logits, tensors, grad_outputs=v.to(logits.dtype),
                                        retain_graph=k < len(image_directions) - 1)
            for name, grad in zip(names, grads):
                sums[name] += grad.float().pow(2)
    return sums


def compute_fisher_diagonal(
    model: nn.Module,
    dataloader: Iterable,
    estimator: str = "exact",
    mc_samples: int = 1,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of `model` on the images of `dataloader`, keyed by `named_parameters()` names.

    The mean over images of the per-image squared score, in fp32. BatchNorm and dropout are in eval mode while it
    runs and every submodule's mode is restored afterwards. Batches are dicts with `pixel_values` (and `labels`,
    needed by the 'empirical' estimator) or `(images, labels)` tuples. Under torch.distributed, each rank passes
    the loader of its own disjoint shard: sums and image counts are all-reduced, so the result equals the
    single-process one.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown Fisher estimator {estimator!r}; choose one of {ESTIMATORS}.")
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    device = next(iter(named.values())).device
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in named.items()}
    count = torch.zeros((), dtype=torch.float64, device=device)
    generator = torch.Generator().manual_seed(seed)
    use_vmap = True
    with eval_mode(model):
        params = {name: p.detach() for name, p in named.items()}
        buffers = dict(model.named_buffers())
        batches = logging.tqdm(dataloader, desc="Fisher", disable=not (show_progress and is_main_process()))
        for batch in batches:
            images, labels = _split_batch(batch)
            images = images.to(device)
            labels = None if labels is None else labels.to(device)
            with torch.no_grad():
                logits = classifier_logits(model, images)
            directions = score_directions(logits, labels, estimator, mc_samples, generator).to(logits.dtype)
            batch_sums = None
            if use_vmap:
                try:
                    batch_sums = _squared_vjps_vmapped(model, params, buffers, images, directions)
                except (RuntimeError, NotImplementedError) as err:
                    logger.warning(f"Per-image gradients via torch.func failed ({err}); looping over images.")
                    use_vmap = False
            if batch_sums is None:
                batch_sums = _squared_vjps_looped(model, named, images, directions)
            for name, value in batch_sums.items():
                sums[name] += value.float()
            count += images.shape[0]
    all_reduce_sum_([*sums.values(), count])
    if count.item() == 0:
        raise ValueError("The Fisher needs at least one forget image; the dataloader was empty.")
    return {name: value / count.float() for name, value in sums.items()}


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's state dict (names, dtypes and bytes)."""
    hasher = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"{name}:{tensor.dtype}:{tensor.numel()}".encode())
        hasher.update(tensor.view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def dataset_fingerprint(dataset) -> str:
    """A `datasets.Dataset`'s own fingerprint, else a hash of every sample's tensors and labels."""
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint is not None:
        return str(fingerprint)
    hasher = hashlib.sha256()
    for index in range(len(dataset)):
        images, labels = _split_batch(dataset[index])
        hasher.update(torch.as_tensor(images).contiguous().numpy().tobytes())
        hasher.update(str(None if labels is None else int(labels)).encode())
    return hasher.hexdigest()


def default_fisher_cache_dir() -> str:
    return os.path.join(hub_constants.HF_HOME, "hf_pbu", "fisher")


def fisher_cache_path(cache_dir: str, model: nn.Module, dataset, estimator: str, mc_samples: int, seed: int) -> str:
    """Where the Fisher of this model (weights), forget data and estimator is cached."""
    settings = f"{estimator}:{mc_samples if estimator == 'mc' else 0}:{seed if estimator == 'mc' else 0}"
    key = hashlib.sha256(f"{model_fingerprint(model)}|{dataset_fingerprint(dataset)}|{settings}".encode())
    return os.path.join(cache_dir, f"fisher-{key.hexdigest()[:32]}.safetensors")


def load_or_compute_fisher(
    model: nn.Module,
    dataset,
    make_dataloader,
    cache_dir: str | None,
    estimator: str = "exact",
    mc_samples: int = 1,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], float]:
    """The Fisher from `cache_dir` when this model and data were seen before, else computed (and cached).

    Returns the Fisher and the seconds spent computing it (0 when read from the cache).
    """
    path = None if cache_dir is None else fisher_cache_path(cache_dir, model, dataset, estimator, mc_samples, seed)
    if path is not None and os.path.exists(path):
        logger.info(f"Loading the Fisher diagonal from the cache {path}")
        device = next(model.parameters()).device
        return {name: t.to(device) for name, t in load_file(path).items()}, 0.0
    start = time.perf_counter()
    fisher = compute_fisher_diagonal(model, make_dataloader(), estimator, mc_samples, seed)
    seconds = time.perf_counter() - start
    if path is not None and is_main_process():
        os.makedirs(cache_dir, exist_ok=True)
        partial = f"{path}.{os.getpid()}.tmp"
        save_file({name: t.contiguous().cpu() for name, t in fisher.items()}, partial)
        os.replace(partial, path)
    return fisher, seconds
