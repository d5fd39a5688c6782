"""Peak memory of the exact Fisher at real input size against its budget (issue 10): a timm ConvNeXt (depthwise 7x7
convs, LayerNorm2d, layer-scale gamma) on random 224x224 images, random init.

    python benchmarks/bench_fisher_memory.py [--model convnext_atto] [--images 64] [--batch_size 64] \
        [--budget_bytes N] [--device cpu|cuda] [--bf16] [--top_mass 0.9] [--num_classes 10]

On CUDA the peak is torch.cuda.max_memory_allocated above what was allocated before the Fisher (model and inputs);
on CPU it is the peak resident set size above the one before, sampled every 5 ms in a thread. The chunk size that
the budget gives is printed by the Fisher's own log line.
"""

import argparse
import json
import logging
import threading
import time
from contextlib import nullcontext

import psutil
import timm
import torch

from hf_pbu.objective.fisher import compute_fisher_diagonal, memory_budget


class PeakRss:
    """The largest resident set size of this process while in the `with` block, sampled in a thread."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self.running = False

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> "PeakRss":
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="convnext_atto", help="a timm architecture, created with random weights")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=64, help="fisher_batch_size")
    parser.add_argument("--budget_bytes", type=int, default=None, help="fisher_memory_budget (default: automatic)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="forward passes under bf16 autocast")
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--top_mass", type=float, default=None)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(format="%(message)s")
    logging.getLogger("hf_pbu").setLevel(logging.INFO)  # the Fisher's chunk size
    device = torch.device(args.device)
    # Random init scales every ConvNeXt block by gamma = 1e-6: its gradients are denormal floats, which x86 CPUs
    # compute ~20x slower (measured: 94 s against 7 s for 64 images). Trained weights do not have them.
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, num_classes=args.num_classes).to(device)
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(min(args.batch_size, args.images - start), 3, args.image_size, args.image_size,
                     generator=generator), None)
        for start in range(0, args.images, args.batch_size)
    ]
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.bf16 else nullcontext
    budget = memory_budget(device, args.budget_bytes)
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    with PeakRss() as rss:
        rss_before = rss.peak
        compute_fisher_diagonal(model, batches, top_mass=args.top_mass, memory_budget_bytes=budget, autocast=autocast,
                                show_progress=False)
        if on_cuda:
            torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) - before if on_cuda else rss.peak - rss_before
    result = {
        "model": args.model,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "device": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "threads": torch.get_num_threads(),
        "images": args.images,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "num_classes": args.num_classes,
        "bf16": args.bf16,
        "top_mass": args.top_mass,
        "budget_GiB": round(budget / 2**30, 3),
        "peak_GiB": round(peak / 2**30, 3),
        "peak_measure": "cuda max_memory_allocated" if on_cuda else "RSS increase",
        "wall_s": round(seconds, 1),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
