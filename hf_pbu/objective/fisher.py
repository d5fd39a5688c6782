"""The diagonal Fisher information of a classifier on the forget data.

For an image x with logits z(x) and softmax p, the score of class c is
    d log p_c / d theta = J^T (e_c - p),       J = dz/dtheta,
so every estimator is a sum of squared vector-Jacobian products J^T v with per-image "directions" v:
    exact      sum_c p_c (e_c - p)(e_c - p)^T = diag(p) - p p^T, which has rank C-1: its exact Cholesky
               factorisation (Tanabe & Sagae 1992, as nngeometry's classif_logits) gives C-1 directions;
               with `top_mass`, v_c = sqrt(p_c) (e_c - p) for the most likely classes covering that mass only
    mc         v_s = (e_{y_s} - p) / sqrt(S), y_s ~ p        (S sampled labels; when S > C, one direction per
                                                             class weighted by its count, the same sum)
    empirical  v   = e_y - p                                 (the true label)
The Fisher diagonal is the mean over images of sum_k (J^T v_k)^2: squares of *per-image* gradients, never of a
batch-summed gradient. Layers of known types get them from one batched backward per direction
(`fisher_layers`); any other parameter from per-image vector-Jacobian products (torch.func.vmap).

Memory: a batch runs in chunks of images sized to a budget (`memory_budget`); a chunk that runs out of memory is
halved and retried, and only a single image that does not fit is an error. Running sums can be saved per rank while
they grow, so that an interrupted Fisher resumes; ranks' sums are added through Accelerate.
"""

import dataclasses
import gc
import hashlib
import os
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from accelerate import PartialState
from accelerate.utils import reduce
from huggingface_hub import cached_assets_path
from torch import nn
from torch.func import functional_call, vjp, vmap
from transformers.utils import logging

from ..distributed import is_main_process
from ..io.fisher_cache import PartialSums, load_checked, save_checked
from ..models import classifier_logits, eval_mode
from .fisher_layers import PENDING_BUDGET_BYTES, batch_coupling_modules, per_image_bytes, squared_gradient_sums

logger = logging.get_logger(__name__)

# The Fisher estimators (`PBUConfig.fisher_estimator` adds "auto", which picks one by the number of classes).
ESTIMATORS = ("exact", "mc", "empirical")
# Share of an accelerator's free memory that the Fisher's chunks may take by default: the rest absorbs the allocator's
# fragmentation and what the estimate of a chunk's peak misses.
ACCELERATOR_BUDGET_FRACTION = 0.7
# Default budget on CPU: the pass is compute-bound there, so chunks beyond a few GiB gain little, and 2 GiB leaves
# room on any machine that can hold a 200M-parameter model with its Fisher and optimizer state.
CPU_BUDGET_BYTES = 2 << 30


@dataclass
class FisherRecord:
    """Where a run's Fisher came from and what it cost, for the results and the card: `source` is "computed" in this
    run, "resumed" from partial sums (`seconds` then counts the time before the interruption), "cached" (the seconds
    recorded when it was computed), "given" by the caller (0 s) or "not needed" (beta = 0); `estimator` is the one
    used ('auto' resolved); the memory budget of its chunks and the accelerator's peak while it ran (None on CPU)."""

    estimator: str | None = None
    seconds: float = 0.0
    source: str = "computed"
    memory_budget_bytes: int | None = None
    peak_memory_bytes: int | None = None

    def results_fields(self) -> dict:
        """As `UnlearningResults` names them (`fisher_<field>`)."""
        return {f"fisher_{name}": value for name, value in dataclasses.asdict(self).items()}


def _exact_factor(probs: torch.Tensor) -> torch.Tensor:
    """U [batch, C-1, C] with U^T U = diag(p) - p p^T for each image: the exact Cholesky factor of the softmax
    covariance (Tanabe & Sagae 1992), with the classes taken by decreasing p so that every ratio is at most 1."""
    sorted_p, order = probs.sort(-1, descending=True)
    tail = sorted_p.flip(-1).cumsum(-1).flip(-1)  # tail[:, j] = sum_{i >= j} p_i, accurate for small tails
    tiny = torch.finfo(probs.dtype).tiny
    from_j, after_j = tail[:, :-1], tail[:, 1:]
    scale = (sorted_p[:, :-1] * after_j / from_j.clamp_min(tiny)).sqrt()  # [batch, C-1]
    num_classes = probs.shape[-1]
    eye = torch.eye(num_classes - 1, num_classes, dtype=probs.dtype, device=probs.device)
    later = torch.ones_like(eye).triu(1)  # class i comes after column j
    factor = (eye - later * sorted_p.unsqueeze(1) / after_j.clamp_min(tiny).unsqueeze(-1)) * scale.unsqueeze(-1)
    return torch.zeros_like(factor).scatter_(2, order.unsqueeze(1).expand_as(factor), factor)


def _top_mass_directions(probs: torch.Tensor, top_mass: float) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(p_c) (e_c - p) for each image's most likely classes, as many as needed to cover `top_mass` (padded
    with zero directions), and each image's uncovered probability mass eps."""
    sorted_p, order = probs.sort(-1, descending=True)
    kept = sorted_p.cumsum(-1) - sorted_p < top_mass  # the mass of the classes before this one is not enough yet
    count = int(kept.sum(-1).max())
    if count >= probs.shape[-1] - 1:  # the exact factor needs no more directions
        return _exact_factor(probs), torch.zeros_like(probs[:, 0])
    onehot = nn.functional.one_hot(order[:, :count], probs.shape[-1]).to(probs.dtype)
    weight = (sorted_p[:, :count] * kept[:, :count]).sqrt().unsqueeze(-1)
    return weight * (onehot - probs.unsqueeze(1)), (sorted_p * ~kept).sum(-1)


def _directions(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    estimator: str,
    mc_samples: int,
    generator: torch.Generator | None,
    top_mass: float | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The directions [batch, K, classes] (in the logits' dtype, at least fp32) and, with `top_mass`, each image's
    uncovered probability mass."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    probs = logits.detach().double().softmax(-1)
    num_classes = probs.shape[-1]
    if estimator == "exact":
        if top_mass is not None:
            directions, uncovered = _top_mass_directions(probs, top_mass)
            return directions.to(dtype), uncovered
        if num_classes == 1:
            return torch.zeros_like(probs, dtype=dtype).unsqueeze(1), None
        return _exact_factor(probs).to(dtype), None
    if estimator == "mc":
        probs = probs.float()
        sampled = torch.multinomial(probs.cpu(), mc_samples, replacement=True, generator=generator).to(probs.device)
        onehot = nn.functional.one_hot(sampled, num_classes).to(probs.dtype)
        if mc_samples > num_classes:  # repeated labels: one direction per class, weighted by its count
            weight = (onehot.sum(1) / mc_samples).sqrt().unsqueeze(-1)
            eye = torch.eye(num_classes, dtype=probs.dtype, device=probs.device)
            return (weight * (eye - probs.unsqueeze(1))).to(dtype), None
        return ((onehot - probs.unsqueeze(1)) / mc_samples**0.5).to(dtype), None
    if estimator == "empirical":
        if labels is None:
            raise ValueError("The 'empirical' Fisher needs the true labels.")
        onehot = nn.functional.one_hot(labels.long(), num_classes).to(probs.dtype)
        return (onehot - probs).unsqueeze(1).to(dtype), None
    raise ValueError(f"Unknown Fisher estimator {estimator!r}; choose one of {ESTIMATORS}.")


def score_directions(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    estimator: str,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
    top_mass: float | None = None,
) -> torch.Tensor:
    """Directions v (shape [batch, K, classes]) such that the Fisher of an image is sum_k (J^T v_k)^2
    (K = C-1 for 'exact', fewer with `top_mass`; min(`mc_samples`, C) for 'mc'; 1 for 'empirical')."""
    return _directions(logits, labels, estimator, mc_samples, generator, top_mass)[0]


def _split_batch(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, dict):
        return batch["pixel_values"], batch.get("labels")
    return batch[0], (batch[1] if len(batch) > 1 else None)


def _squared_vjps_vmapped(model, params, buffers, images, directions, budget: int) -> dict[str, torch.Tensor]:
    """sum over images and directions of (J^T v)^2 for `params` (all or some of the model's), with per-image
    gradients from torch.func, vmapped over as many images as their gradients fit in `budget` bytes."""

    def one_image(image: torch.Tensor, image_directions: torch.Tensor) -> dict[str, torch.Tensor]:
        def logits_of(p):
            return classifier_logits_functional(model, p, buffers, image.unsqueeze(0)).squeeze(0)

        _, vjp_fn = vjp(logits_of, params)
        grads = vmap(vjp_fn)(image_directions)[0]
        return {name: grad.pow(2).sum(0) for name, grad in grads.items()}

    n_params = sum(p.numel() for p in params.values())
    per_image_bytes = 4 * n_params * (directions.shape[1] + 1)
    chunk = max(1, min(len(images), budget // per_image_bytes))
    with torch.no_grad():  # the parameters left out of `params` are constants here
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


def memory_budget(device: torch.device, budget: int | None = None) -> int:
    """The bytes a Fisher chunk may take: `budget` if given; else, on an accelerator, ACCELERATOR_BUDGET_FRACTION of
    its free memory now (the model and the optimizer's future state are already counted out or come later, lazily);
    on CPU, CPU_BUDGET_BYTES (there the pass is compute-bound: bigger chunks gain little, and free RAM is shared)."""
    if budget is not None:
        return budget
    if device.type == "cpu":
        return CPU_BUDGET_BYTES
    free, _ = torch.accelerator.get_memory_info(device)
    return int(free * ACCELERATOR_BUDGET_FRACTION)


def _sum_into(total: dict[str, torch.Tensor], part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for name, value in part.items():
        total[name] = total[name] + value if name in total else value
    return total


class _BatchFisher:
    """Per-batch sums of squared per-image scores: handled layers from batched backward passes, the remaining
    parameters from torch.func (or, if torch.func cannot run the model, one backward per image and direction).

    A batch runs in chunks of images sized to the memory budget (estimated from one image's activations); a chunk that
    runs out of memory is halved and retried, down to one image. Once split, the batch's directions come from one
    gradient-free forward pass, its images are grouped by their number of nonzero directions (top_mass: fewer for
    confident images) and every group runs only its own directions."""

    def __init__(self, model: nn.Module, named: dict[str, nn.Parameter], budget: int, autocast, group_by_count: bool):
        self.model = model
        self.named = named
        self.budget = budget
        self.autocast = autocast
        self.group_by_count = group_by_count
        coupling = batch_coupling_modules(model)
        if coupling:
            logger.info(f"Norm layers without running statistics ({coupling[:3]}) couple the images of a batch: "
                        "the Fisher is computed one image at a time.")
        self.batched = not coupling
        self.use_vmap = True
        self.buffers = dict(model.named_buffers())
        self.image_bytes: int | None = None
        self.chunk: int | None = None

    def __call__(self, images: torch.Tensor, directions_of) -> dict[str, torch.Tensor]:
        if self.chunk is None:
            with self.autocast():
                self.image_bytes = per_image_bytes(self.model, images, classifier_logits)
            # A quarter of the budget is left to the output gradients that layers keep across directions.
            self.chunk = max(1, self.budget * 3 // 4 // self.image_bytes)
            logger.info(f"Fisher: about {self.image_bytes / 2**20:.0f} MiB per image, chunks of up to {self.chunk} "
                        f"images for a budget of {self.budget / 2**30:.2f} GiB.")
        memo: list[torch.Tensor] = []

        def directions_once(logits: torch.Tensor) -> torch.Tensor:
            if not memo:
                memo.append(directions_of(logits))
            return memo[0]

        if self.chunk >= len(images) and not self.group_by_count:
            try:
                return self._chunk(images, directions_once)
            except torch.OutOfMemoryError:
                pass
            self._halve(len(images))
        return self._grouped(images, memo[0] if memo else self._directions(images, directions_once))

    def _directions(self, images: torch.Tensor, directions_of) -> torch.Tensor:
        """The directions of the whole batch, from its logits in gradient-free chunks."""
        with torch.no_grad(), self.autocast():
            logits = torch.cat([self._logits(images[i : i + self.chunk]) for i in range(0, len(images), self.chunk)])
        return directions_of(logits).to(logits.dtype)

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        if self.batched:
            return classifier_logits(self.model, images)
        return torch.cat([classifier_logits(self.model, x[None]) for x in images])

    def _grouped(self, images: torch.Tensor, directions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Chunks of images with the same number of nonzero directions, each with those directions only."""
        nonzero = directions.flatten(2).any(-1)
        order = nonzero.to(torch.int8).argsort(dim=1, descending=True, stable=True)
        directions = directions.gather(1, order.unsqueeze(-1).expand_as(directions))  # nonzero directions first
        counts = nonzero.sum(1)
        sums: dict[str, torch.Tensor] = {}
        for count in counts.unique().tolist():
            members = (counts == count).nonzero().flatten()
            start = 0
            while count and start < len(members):
                part = members[start : start + self.chunk]
                try:
                    _sum_into(sums, self._chunk(images[part], lambda _, d=directions[part, :count]: d))
                    start += len(part)
                    continue
                except torch.OutOfMemoryError:
                    pass
                self._halve(len(part))
        return sums

    def _halve(self, size: int) -> None:
        """After running out of memory on a chunk of `size` images: free what the failed attempt held, halve."""
        gc.collect()
        if torch.accelerator.is_available():
            torch.accelerator.empty_cache()
        if size <= 1:
            raise torch.OutOfMemoryError(
                "The Fisher of a single image does not fit in memory: lower `fisher_memory_budget` (bytes) if other "
                "work shares the device, or free memory; `fisher_batch_size` does not help at one image per chunk."
            )
        self.chunk = max(1, size // 2)
        logger.warning(f"Out of memory on a Fisher chunk of {size} images: retrying with chunks of {self.chunk}. "
                       "Set `fisher_memory_budget` to size the chunks from the start.")

    def _chunk(self, images: torch.Tensor, directions_of) -> dict[str, torch.Tensor]:
        with self.autocast():
            if self.batched:
                pending = max(1, min(PENDING_BUDGET_BYTES, self.budget // 4 // max(1, len(self.named))))
                sums, rest, directions = squared_gradient_sums(
                    self.model, self.named, images, directions_of, classifier_logits, pending
                )
            else:
                with torch.no_grad():  # each image's logits on its own, as its per-image gradients see it
                    logits = self._logits(images)
                directions = directions_of(logits).to(logits.dtype)
                sums, rest = {}, list(self.named)
            if rest:
                sums.update(self._general(images, directions, {name: self.named[name] for name in rest}))
        return sums

    def _general(self, images, directions, params) -> dict[str, torch.Tensor]:
        if self.use_vmap:
            try:
                detached = {name: p.detach() for name, p in params.items()}
                budget = max(1, self.budget - len(images) * self.image_bytes)
                return _squared_vjps_vmapped(self.model, detached, self.buffers, images, directions, budget)
            except torch.OutOfMemoryError:
                raise  # halved by the caller, never a reason for the slow loop
            except (RuntimeError, NotImplementedError) as err:
                logger.warning(f"Per-image gradients via torch.func failed ({err}); looping over images.")
                self.use_vmap = False
        return _squared_vjps_looped(self.model, params, images, directions)


def compute_fisher_diagonal(
    model: nn.Module,
    dataloader: Iterable,
    estimator: str = "exact",
    mc_samples: int = 1,
    seed: int = 0,
    show_progress: bool = True,
    top_mass: float | None = None,
    memory_budget_bytes: int | None = None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    partial_path: str | PartialSums | None = None,
    checkpoint_seconds: float = 300.0,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of `model` on the images of `dataloader`, keyed by `named_parameters()` names.

    The mean over images of the per-image squared score, in fp32. BatchNorm and dropout are in eval mode while it
    runs and every submodule's mode is restored afterwards. Batches are dicts with `pixel_values` (and `labels`,
    needed by the 'empirical' estimator) or `(images, labels)` tuples. Under Accelerate (or torch.distributed), each
    rank passes the loader of its own disjoint shard: sums and image counts are summed across ranks, so the result
    equals the single-process one.

    `top_mass` (exact estimator only; for many classes): per image, only the most likely classes that together
    hold at least this probability mass enter the expectation. The uncovered mass eps (at most 1 - top_mass) is
    logged; the result is a lower bound of the exact Fisher, equal to it for `top_mass=1`.

    `memory_budget_bytes` sizes the chunks of images that run at once (None: `memory_budget`'s default for the
    device). `autocast` makes the context the forward passes run in (e.g. the run's bf16 autocast); the sums stay
    fp32. With `partial_path` (a path, or a `PartialSums`), this rank's running sums are saved there at most every
    `checkpoint_seconds`, and a run that finds a sound file resumes after the batches it holds (same data, batch size
    and process count); a file that is not sound is set aside with a warning and the Fisher starts afresh.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown Fisher estimator {estimator!r}; choose one of {ESTIMATORS}.")
    if top_mass is not None and (estimator != "exact" or not 0 < top_mass <= 1):
        raise ValueError(f"top_mass={top_mass} needs estimator='exact' and a value in (0, 1].")
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    device = next(iter(named.values())).device
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in named.items()}
    count = torch.zeros((), dtype=torch.float64, device=device)
    uncovered_sum = torch.zeros((), dtype=torch.float64, device=device)
    uncovered_max = torch.zeros((), dtype=torch.float64, device=device)
    generator = torch.Generator().manual_seed(seed)
    generator_state = generator.get_state()
    state = {**{f"sum.{name}": value for name, value in sums.items()}, "count": count,
             "uncovered_sum": uncovered_sum, "uncovered_max": uncovered_max, "generator": generator_state}
    partial = PartialSums(partial_path) if isinstance(partial_path, str) else partial_path
    done = partial.load_into(state) if partial is not None else 0
    generator.set_state(generator_state)
    last_save = time.monotonic()
    with eval_mode(model):
        batch_fisher = _BatchFisher(model, named, memory_budget(device, memory_budget_bytes), autocast,
                                    group_by_count=top_mass is not None)
        batches = logging.tqdm(dataloader, desc="Fisher", disable=not (show_progress and is_main_process()))
        for index, batch in enumerate(batches):
            if index < done:
                continue
            images, labels = _split_batch(batch)
            images = images.to(device)
            labels = None if labels is None else labels.to(device)

            def directions_of(logits: torch.Tensor, labels=labels) -> torch.Tensor:
                directions, eps = _directions(logits, labels, estimator, mc_samples, generator, top_mass)
                if eps is not None:
                    uncovered_sum.add_(eps.sum())
                    uncovered_max.copy_(torch.maximum(uncovered_max, eps.max()))
                return directions

            for name, value in batch_fisher(images, directions_of).items():
                sums[name] += value.float()
            count += images.shape[0]
            if partial is not None and time.monotonic() - last_save >= checkpoint_seconds:
                generator_state.copy_(generator.get_state())
                partial.save(state, index + 1)
                last_save = time.monotonic()
    totals = reduce({"sums": sums, "count": count, "uncovered_sum": uncovered_sum}, reduction="sum")
    total_count = totals["count"].item()
    if total_count == 0:
        raise ValueError("The Fisher needs at least one forget image; the dataloader was empty.")
    if top_mass is not None:
        logger.info(
            f"Fisher over the classes covering {top_mass:.4g} of each image's probability: uncovered mass eps "
            f"mean {totals['uncovered_sum'].item() / total_count:.3g}, max {uncovered_max.item():.3g} (max on this "
            "rank)."
        )
    return {name: value / total_count for name, value in totals["sums"].items()}


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
    """The Fisher cache's default folder: huggingface_hub's assets cache for this library
    (`$HF_ASSETS_CACHE/hf_pbu/default/fisher`, by default under `$HF_HOME/assets`), created if missing."""
    return str(cached_assets_path(library_name="hf_pbu", subfolder="fisher"))


def fisher_cache_key(
    model: nn.Module, dataset, estimator: str, mc_samples: int, seed: int, top_mass: float | None = None,
) -> dict[str, str]:
    """What a Fisher is computed for: the weights (sha256), the forget data (its fingerprint) and sample size, and
    the estimator with its settings; `key`, a sha256 of them, names its cache file. Each cache file records it in its
    metadata, and a file whose record differs (another key's file renamed or copied in) is set aside."""
    settings = f"{estimator}:{mc_samples if estimator == 'mc' else 0}:{seed if estimator == 'mc' else 0}"
    if top_mass is not None:
        settings += f":top_mass={top_mass!r}"
    weights, data = model_fingerprint(model), dataset_fingerprint(dataset)
    key = hashlib.sha256(f"{weights}|{data}|{settings}".encode()).hexdigest()
    return {"key": key, "model_weights_sha256": weights, "forget_data": data, "forget_samples": str(len(dataset)),
            "estimator": settings}


def fisher_cache_file(cache_dir: str, key: dict[str, str]) -> str:
    """The cache file of the Fisher computed for `key` (`fisher_cache_key`)."""
    return os.path.join(cache_dir, f"fisher-{key['key'][:32]}.safetensors")


def fisher_cache_path(
    cache_dir: str, model: nn.Module, dataset, estimator: str, mc_samples: int, seed: int,
    top_mass: float | None = None,
) -> str:
    """Where the Fisher of this model (weights), forget data and estimator is cached."""
    return fisher_cache_file(cache_dir, fisher_cache_key(model, dataset, estimator, mc_samples, seed, top_mass))


def fisher_partial_path(cache_path: str, batch_size: int | None) -> str:
    """Where this rank keeps the running sums of the Fisher cached at `cache_path` while it is computed (they
    resume only the same batch size and process count)."""
    state = PartialState()
    return cache_path.replace(
        ".safetensors", f".partial-b{batch_size}-{state.process_index}-of-{state.num_processes}.safetensors"
    )


def fisher_partial_sums(cache_dir: str, key: dict[str, str], batch_size: int | None) -> PartialSums:
    """This rank's running sums of the Fisher computed for `key`, kept beside its cache file and recording the key,
    the batch size and the process count they were computed with."""
    state = PartialState()
    partial_key = {**key, "batch_size": str(batch_size), "process": f"{state.process_index}/{state.num_processes}"}
    return PartialSums(fisher_partial_path(fisher_cache_file(cache_dir, key), batch_size), partial_key)


def check_fisher_is_finite(fisher: dict[str, torch.Tensor]) -> None:
    """Refuse a Fisher with NaN or infinite entries, before it weighs the penalty or enters the cache."""
    bad = [name for name, value in fisher.items() if not torch.isfinite(value).all()]
    if bad:
        raise ValueError(
            f"The Fisher computed on the forget data is not finite in {len(bad)} parameter(s) ({', '.join(bad[:3])}): "
            "the model's outputs or gradients are not finite on some forget images. Check the model's weights and "
            "the images (a NaN or infinite pixel); under fp16 mixed precision, try bf16 or fp32."
        )


def load_or_compute_fisher(
    model: nn.Module,
    dataset,
    make_dataloader,
    cache_dir: str | None,
    estimator: str = "exact",
    mc_samples: int = 1,
    seed: int = 0,
    top_mass: float | None = None,
    memory_budget_bytes: int | None = None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    show_progress: bool = True,
) -> tuple[dict[str, torch.Tensor], float, str]:
    """The Fisher from `cache_dir` when this model and data were seen before, else computed (and cached), with a
    progress bar unless `show_progress` is False (`--disable_tqdm`).

    A cache file is used only if it is sound (`hf_pbu.io.fisher_cache`: computed for this key (`fisher_cache_key`),
    shapes, finite, non-negative, checksum); a bad
    one is set aside with a warning and the Fisher computed again. While it is computed, each rank keeps its running
    sums in a partial file beside the cache entry (keyed by the batch size and the process count too), so that an
    interrupted run resumes where it stopped. Returns the Fisher, the seconds its computation took (for a cached
    one, as recorded when it was computed; for a resumed one, including the part before the interruption) and where
    it came from: "computed", "resumed" or "cached".
    """
    key = None if cache_dir is None else fisher_cache_key(model, dataset, estimator, mc_samples, seed, top_mass)
    path = None if key is None else fisher_cache_file(cache_dir, key)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if p.requires_grad}
    cached = None if path is None else load_checked(path, shapes, "Fisher cache file", key)
    if cached is not None:
        logger.info(f"Loading the Fisher diagonal from the cache {path}")
        device = next(model.parameters()).device
        fisher, seconds = cached
        return {name: t.to(device) for name, t in fisher.items()}, seconds, "cached"
    dataloader = make_dataloader()
    partial = None
    if path is not None:
        os.makedirs(cache_dir, exist_ok=True)
        partial = fisher_partial_sums(cache_dir, key, getattr(dataloader, "batch_size", None))
    start = time.perf_counter()
    fisher = compute_fisher_diagonal(
        model, dataloader, estimator, mc_samples, seed, show_progress, top_mass=top_mass,
        memory_budget_bytes=memory_budget_bytes, autocast=autocast, partial_path=partial,
    )
    seconds = partial.seconds if partial is not None else time.perf_counter() - start
    check_fisher_is_finite(fisher)
    if path is not None and is_main_process():
        try:
            save_checked(path, fisher, seconds, key)
        except OSError as err:  # the Fisher is computed: a cache that cannot be written costs only the next run
            logger.warning(f"Could not cache the Fisher: {err}")
    if partial is not None:
        partial.remove()
    return fisher, seconds, "resumed" if partial is not None and partial.resumed else "computed"
