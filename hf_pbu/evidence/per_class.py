"""Where each class stands after unlearning: per-class test accuracy, where the forgotten classes' images go now, and
the before/after chart that every run's card embeds."""

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..io.atomic import atomic_file
from ..io.escaping import chart_label


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy in % of each class (None for a class with no test image): the chart's bars, and the one number
    per class that shows whether forgetting one class cost another."""
    predicted = torch.as_tensor(logits).argmax(-1).cpu()
    labels = torch.as_tensor(labels).reshape(-1).cpu().long()
    result: list[float | None] = []
    for c in range(num_classes):
        mask = labels == c
        count = int(mask.sum())
        result.append(None if count == 0 else 100.0 * int((predicted[mask] == c).sum()) / count)
    return result


def forget_confusion(
    logits: torch.Tensor, labels: torch.Tensor, forget_classes: Sequence[int], names: Sequence[str], top: int = 5
) -> dict[str, dict[str, float]]:
    """Where each forgotten class's test images are predicted now: {forget class name: {predicted class name:
    share of its images in %}}, the `top` largest shares first. The oracle sends them to their nearest classes;
    a spread over many classes, or one dumping class, is a method's signature."""
    predicted = torch.as_tensor(logits).argmax(-1).cpu()
    labels = torch.as_tensor(labels).reshape(-1).cpu().long()
    result: dict[str, dict[str, float]] = {}
    for c in forget_classes:
        mask = labels == int(c)
        count = int(mask.sum())
        if count == 0:
            result[names[int(c)]] = {}
            continue
        counts = torch.bincount(predicted[mask], minlength=len(names))
        order = sorted(range(len(counts)), key=lambda p: (-int(counts[p]), p))
        result[names[int(c)]] = {names[p]: 100.0 * int(counts[p]) / count for p in order[:top] if counts[p] > 0}
    return result


def chart_font_draws(texts: Sequence[str]) -> bool:
    """Whether the chart's font (matplotlib's default family, with its fallbacks) has a glyph for every character of
    `texts`: where it has not (CJK names in DejaVu Sans), matplotlib draws an empty box and warns."""
    try:
        from matplotlib import font_manager
    except ImportError:  # the chart itself names the missing package
        return True
    properties = font_manager.FontProperties()
    try:
        paths = font_manager.fontManager._find_fonts_by_props(properties)  # the family with its fallbacks
    except Exception:  # a private helper: its single-font equivalent otherwise
        paths = [font_manager.findfont(properties)]
    covered: set[int] = set()
    for path in paths:
        covered.update(font_manager.get_font(path).get_charmap())
    return all(ord(ch) in covered for text in texts for ch in chart_label(text) if not ch.isspace())


def chart_class_ids(before: Sequence[float | None], after: Sequence[float | None], names: Sequence[str],
                    forget_classes: Sequence[int], max_classes: int = 40) -> list[int]:
    """The classes the chart shows: all of them, or, beyond `max_classes`, the forget classes and the classes whose
    accuracy changed most."""
    def value(v: float | None) -> float:
        return math.nan if v is None else float(v)

    forget = [int(c) for c in forget_classes]
    shown = list(range(len(names)))
    if len(shown) > max_classes:
        change = {c: abs(value(after[c]) - value(before[c])) for c in shown if c not in forget}
        ranked = sorted(change, key=lambda c: -(change[c] if not math.isnan(change[c]) else -1.0))
        shown = sorted(forget + ranked[: max(0, max_classes - len(forget))])
    return shown


def plot_per_class_accuracy(
    before: Sequence[float | None],
    after: Sequence[float | None],
    names: Sequence[str],
    forget_classes: Sequence[int],
    path: str,
    title: str = "Per-class test accuracy before and after unlearning",
    max_classes: int = 40,
    by_id: bool | None = None,
) -> str:
    """Write a PNG bar chart of each class's accuracy before and after, the forget classes highlighted; returns
    `path`. With more than `max_classes` classes it shows the forget classes and the classes whose accuracy
    changed most, so that the chart stays readable for ImageNet-size heads. Class names are drawn as plain text
    (no mathtext or TeX: a `$` or `^` in a name is a character); `by_id` labels the axis with class ids instead
    (None: when the font cannot draw every shown name, `chart_font_draws`; the card then lists the names). The file
    is written whole or not at all."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("The per-class accuracy chart needs matplotlib: `pip install matplotlib`.") from None

    def value(v: float | None) -> float:
        return math.nan if v is None else float(v)

    forget = [int(c) for c in forget_classes]
    shown = chart_class_ids(before, after, names, forget, max_classes)
    if len(shown) < len(names):
        title += f" ({len(shown)} of {len(names)} classes: the forgotten ones and the largest changes)"
    if by_id is None:
        by_id = not chart_font_draws([names[c] for c in shown])
    labels = [str(c) if by_id else chart_label(names[c]) for c in shown]

    x = np.arange(len(shown))
    width = 0.4
    figure = Figure(figsize=(min(24.0, max(6.0, 0.45 * len(shown) + 2)), 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.bar(x - width / 2, [value(before[c]) for c in shown], width, label="before", color="#9db4d6")
    after_colors = ["#d62728" if c in forget else "#1f4e96" for c in shown]
    axes.bar(x + width / 2, [value(after[c]) for c in shown], width, label="after", color=after_colors)
    for i, c in enumerate(shown):
        if c in forget:
            axes.axvspan(i - 0.5, i + 0.5, color="#d62728", alpha=0.08, linewidth=0)
    axes.set_xticks(x, labels, rotation=45 if len(shown) > 8 else 0, ha="right"
                    if len(shown) > 8 else "center", parse_math=False, usetex=False)
    for label, c in zip(axes.get_xticklabels(), shown):
        if c in forget:
            label.set_color("#d62728")
            label.set_fontweight("bold")
    axes.set_ylim(0, 119)
    axes.set_ylabel("test accuracy (%)")
    if by_id:
        axes.set_xlabel("class id (names in the model card)")
    axes.set_title(title, fontsize=10)
    from matplotlib.patches import Patch

    handles = [Patch(color="#9db4d6", label="before"), Patch(color="#1f4e96", label="after (retained class)"),
               Patch(color="#d62728", label="after (forgotten class)")]
    axes.legend(handles=handles, loc="upper center", ncol=3, fontsize=8, frameon=False)
    figure.tight_layout()
    with atomic_file(path, "wb") as f:
        figure.savefig(f, format="png", dpi=100)
    return path

