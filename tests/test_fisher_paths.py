"""Every code path of the fast Fisher (per-layer closed forms, pair and per-image GEMMs, grouped and depthwise convs,
norm layers of torch and timm, scale parameters, the general fallback, top-mass truncation and grouping, the C-1
factorisation, collapsed mc draws, memory chunks and their halving on OOM, resuming) against a brute-force loop: one
image and one class at a time, plain autograd, float64."""

import pytest
import timm
import torch
from fisher_reference import brute_force_fisher, max_rel_error
from timm.layers import LayerNorm, LayerNorm2d, LayerScale, LayerScale2d
from torch import nn

from hf_pbu.models import classifier_logits
from hf_pbu.objective import fisher as fisher_module
from hf_pbu.objective import fisher_layers
from hf_pbu.objective.fisher import _exact_factor, compute_fisher_diagonal, score_directions
from hf_pbu.objective.fisher_layers import squared_gradient_sums


def fisher(model, images, batch_size=3, **kwargs):
    batches = [(images[i : i + batch_size], None) for i in range(0, len(images), batch_size)]
    return compute_fisher_diagonal(model, batches, show_progress=False, **kwargs)


def randomise_norm_layers(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, as a trained model has."""
    torch.manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
            if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.3)
    return model


class ConvNet(nn.Module):
    """Conv2d (8x8 positions) + BatchNorm2d + in-place ReLU, a grouped strided conv (2x2 positions), a 1x1 conv,
    pooling and a Linear head: the per-image, pair and single-position paths of the fast code."""

    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.ReLU(inplace=True)
        self.down = nn.Conv2d(6, 8, 3, stride=4, padding=1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.point = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        x = self.act(self.bn(self.stem(x)))
        x = self.act(self.bn2(self.down(x)))
        return self.head(self.point(x).mean((2, 3)))


class TokenNet(nn.Module):
    """Linear layers over a sequence of patches, LayerNorm, GroupNorm and BatchNorm1d."""

    def __init__(self, classes=4):
        super().__init__()
        self.gn = nn.GroupNorm(3, 3)
        self.embed = nn.Linear(12, 10)
        self.ln = nn.LayerNorm(10)
        self.bn = nn.BatchNorm1d(10)
        self.head = nn.Linear(10, classes)

    def forward(self, x):
        x = self.gn(x)
        tokens = x.unfold(2, 2, 2).unfold(3, 2, 2).permute(0, 2, 3, 1, 4, 5).reshape(x.shape[0], -1, 12)
        tokens = self.ln(torch.tanh(self.embed(tokens)))
        return self.head(self.bn(tokens.mean(1)))


class MixedNet(nn.Module):
    """Layers the fast path leaves to the general one: a Conv1d, a PReLU, a bare parameter, a Linear called twice,
    a Linear on a sequence-first tensor and a Conv2d subclass; next to handled ones."""

    class ScaledConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 1.5

    def __init__(self, classes=3):
        super().__init__()
        self.conv = self.ScaledConv(3, 4, 3, padding=1)
        self.prelu = nn.PReLU(4)
        self.offset = nn.Parameter(torch.randn(4, 1, 1))
        self.mix = nn.Conv1d(4, 4, 3, padding=1)
        self.shared = nn.Linear(4, 4)
        self.sequence_first = nn.Linear(4, 4)
        self.head = nn.Linear(4, classes)

    def forward(self, x):
        x = self.prelu(self.conv(x)) + self.offset
        x = self.mix(x.flatten(2))  # [B, 4, positions]
        x = self.sequence_first(x.permute(2, 0, 1)).mean(0)  # [positions, B, 4]
        return self.head(self.shared(torch.tanh(self.shared(x))))


def images(n=7, size=8, seed=0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("path", ["pairs", "per_image", "cost_model"])
def test_conv_bn_linear_paths_match_brute_force(monkeypatch, path):
    if path != "cost_model":
        monkeypatch.setattr(fisher_layers, "_pairs_are_cheaper", lambda *shape: path == "pairs")
    monkeypatch.setattr(fisher_layers, "CHUNK_BUDGET_BYTES", 1)  # one image per chunk: exercises the chunking
    torch.manual_seed(0)
    model = randomise_norm_layers(ConvNet()).double()
    x = images()
    reference = brute_force_fisher(model, x)
    assert max_rel_error(fisher(model, x), reference) <= 1e-5


def test_every_parameter_of_handled_layers_takes_the_fast_path_in_float64():
    torch.manual_seed(0)
    model = randomise_norm_layers(ConvNet()).double().eval()
    x = images()
    named = dict(model.named_parameters())
    sums, rest, directions = squared_gradient_sums(
        model, named, x, lambda logits: score_directions(logits, None, "exact"), classifier_logits
    )
    assert rest == [] and set(sums) == set(named)
    assert directions.shape == (len(x), 4, 5)  # C-1 directions
    reference = brute_force_fisher(model, x)
    assert max_rel_error({n: s / len(x) for n, s in sums.items()}, reference) <= 1e-10


def test_sequence_linear_and_norm_layers_match_brute_force():
    torch.manual_seed(0)
    model = randomise_norm_layers(TokenNet()).double()
    x = images()
    named = dict(model.named_parameters())
    _, rest, _ = squared_gradient_sums(
        model.eval(), named, x, lambda logits: score_directions(logits, None, "exact"), classifier_logits
    )
    assert rest == []
    assert max_rel_error(fisher(model, x), brute_force_fisher(model, x)) <= 1e-5


def test_unhandled_layers_fall_back_and_match_brute_force():
    torch.manual_seed(0)
    model = MixedNet().double()
    x = images(5)
    named = dict(model.named_parameters())
    _, rest, _ = squared_gradient_sums(
        model.eval(), named, x, lambda logits: score_directions(logits, None, "exact"), classifier_logits
    )
    assert set(rest) == {"conv.weight", "conv.bias", "prelu.weight", "offset", "mix.weight", "mix.bias",
                         "shared.weight", "shared.bias", "sequence_first.weight", "sequence_first.bias"}
    assert max_rel_error(fisher(model, x), brute_force_fisher(model, x)) <= 1e-5


def test_frozen_parameters_are_left_out():
    torch.manual_seed(0)
    model = randomise_norm_layers(ConvNet()).double()
    model.stem.weight.requires_grad_(False)
    model.bn.bias.requires_grad_(False)
    x = images(4)
    result = fisher(model, x)
    assert "stem.weight" not in result and "bn.bias" not in result
    assert max_rel_error(result, brute_force_fisher(model, x)) <= 1e-5


def test_batch_statistics_norm_falls_back_to_one_image_at_a_time():
    torch.manual_seed(0)
    model = ConvNet().double()
    model.bn.track_running_stats = False
    model.bn.running_mean = model.bn.running_var = None  # batch statistics even in eval mode
    model.stem.bias.requires_grad_(False)  # batch statistics cancel it: its Fisher is rounding noise
    x = images(4)
    assert max_rel_error(fisher(model, x, batch_size=4), brute_force_fisher(model, x)) <= 1e-5


def test_top_mass_one_equals_exact_and_smaller_mass_keeps_the_top_classes():
    torch.manual_seed(0)
    model = randomise_norm_layers(ConvNet(classes=6)).double()
    with torch.no_grad():
        model.head.weight.mul_(8)  # peaked softmax, so that a few classes hold most of the mass
    x = images(5)
    exact = fisher(model, x)
    assert max_rel_error(fisher(model, x, top_mass=1.0), exact) <= 1e-6
    mass = 0.9

    def top_classes(probs):
        order = probs.argsort(descending=True)
        before = probs[order].cumsum(0) - probs[order]
        return order[before < mass].tolist()

    truncated = fisher(model, x, top_mass=mass)
    assert max_rel_error(truncated, brute_force_fisher(model, x, classes_of=top_classes)) <= 1e-5
    assert max_rel_error(truncated, {n: t.double() for n, t in exact.items()}) > 1e-6  # something was left out
    assert all((truncated[n] <= exact[n] * (1 + 1e-6) + 1e-12).all() for n in exact)  # a lower bound


@pytest.mark.parametrize("probs", [
    [0.5, 0.3, 0.2],
    [1.0 - 3e-9, 1e-9, 1e-9, 1e-9],  # confident: the float32 1 - cumsum(p) of nngeometry is NaN here
    [0.0, 0.25, 0.75, 0.0, 0.0],  # exact zeros
])
def test_exact_factor_has_c_minus_one_rows_and_reproduces_the_softmax_covariance(probs):
    p = torch.tensor([probs], dtype=torch.float64)
    factor = _exact_factor(p)
    assert factor.shape == (1, p.shape[1] - 1, p.shape[1])
    covariance = torch.diag(p[0]) - p[0, :, None] * p[0, None, :]
    torch.testing.assert_close(factor[0].T @ factor[0], covariance, rtol=0, atol=1e-15)


def test_collapsed_mc_draws_equal_the_drawn_directions():
    logits = torch.randn(4, 3, dtype=torch.float64)
    drawn = 50
    collapsed = score_directions(logits, None, "mc", drawn, torch.Generator().manual_seed(3))
    assert collapsed.shape == (4, 3, 3)
    probs = logits.softmax(-1)
    labels = torch.multinomial(probs.float(), drawn, replacement=True, generator=torch.Generator().manual_seed(3))
    each = (nn.functional.one_hot(labels, 3) - probs.float().unsqueeze(1)).double() / drawn**0.5
    torch.testing.assert_close(collapsed.transpose(1, 2) @ collapsed, each.transpose(1, 2) @ each, rtol=1e-5,
                               atol=1e-7)


def test_top_mass_is_checked():
    model = ConvNet()
    with pytest.raises(ValueError, match="top_mass"):
        fisher(model, images(2).float(), estimator="mc", top_mass=0.9)
    with pytest.raises(ValueError, match="top_mass"):
        fisher(model, images(2).float(), top_mass=0.0)


def test_hooks_are_removed_even_when_the_directions_fail():
    model = ConvNet()
    x = images(2).float()
    fisher(model, x)
    with pytest.raises(ValueError, match="true labels"):
        fisher(model, x, estimator="empirical")  # no labels: fails inside the hooked forward pass
    assert not any(module._forward_hooks for module in model.modules())


class TimmBlocksNet(nn.Module):
    """The layers of timm's ConvNeXt and ViT: LayerNorm2d, a 7x7 depthwise conv, a strided dilated depthwise conv with
    a channel multiplier, a grouped conv, a bare `gamma` used as ConvNeXtBlock uses it, timm's LayerNorm on NHWC,
    LayerScale (in place too) and LayerScale2d."""

    def __init__(self, classes=4):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.norm2d = LayerNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.dw_multiplier = nn.Conv2d(8, 16, 3, stride=2, padding=2, dilation=2, groups=8)
        self.grouped = nn.Conv2d(16, 8, 3, padding=1, groups=4, bias=False)
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.norm = LayerNorm(8)
        self.fc = nn.Linear(8, 8)
        self.ls = LayerScale(8, init_values=0.7)
        self.ls_inplace = LayerScale(8, init_values=1.3, inplace=True)
        self.ls2d = LayerScale2d(8, init_values=0.9)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        x = self.dw(self.norm2d(self.stem(x)))
        x = torch.tanh(self.grouped(torch.tanh(self.dw_multiplier(x))))
        x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        x = self.ls(self.norm(x.permute(0, 2, 3, 1)))
        x = self.ls_inplace(self.fc(x)).permute(0, 3, 1, 2)
        return self.head(self.ls2d(torch.tanh(x)).mean((2, 3)))


def fast_path_rest(model, x) -> list[str]:
    """The parameters that the batched path leaves to the general one."""
    named = dict(model.named_parameters())
    return squared_gradient_sums(
        model.eval(), named, x, lambda logits: score_directions(logits, None, "exact"), classifier_logits
    )[1]


def randomise(model: nn.Module) -> nn.Module:
    """Every parameter of order one (timm initialises layer scales at 1e-6 and biases at zero)."""
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def test_timm_norms_grouped_convs_and_scales_take_the_fast_path_and_match_brute_force():
    torch.manual_seed(0)
    model = randomise(TimmBlocksNet()).double()
    x = images(5, size=9)
    assert fast_path_rest(model, x) == []
    assert max_rel_error(fisher(model, x), brute_force_fisher(model, x)) <= 1e-5


def test_a_scale_used_twice_is_left_to_the_general_path():
    class TwiceScaled(TimmBlocksNet):
        def forward(self, x):
            return super().forward(x * self.gamma.sum())

    torch.manual_seed(0)
    model = randomise(TwiceScaled()).double()
    x = images(3, size=9)
    assert fast_path_rest(model, x) == ["gamma"]
    assert max_rel_error(fisher(model, x), brute_force_fisher(model, x)) <= 1e-5


@pytest.mark.parametrize("name,kwargs", [
    ("convnext_atto", {}),
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 32, "num_heads": 2, "depth": 2,
                              "init_values": 1e-5}),
])
def test_timm_models_match_brute_force(name, kwargs):
    torch.manual_seed(0)
    model = randomise(timm.create_model(name, pretrained=False, num_classes=3, **kwargs)).double()
    x = images(3, size=32)
    rest = fast_path_rest(model, x)
    assert rest == ([] if name.startswith("convnext") else ["cls_token", "pos_embed"])
    assert max_rel_error(fisher(model, x), brute_force_fisher(model, x)) <= 1e-5


def test_chunks_fit_the_budget_and_out_of_memory_halves_them(monkeypatch):
    torch.manual_seed(0)
    model = randomise_norm_layers(ConvNet()).double()
    x = images(7)
    reference = brute_force_fisher(model, x)
    seen = []
    original = fisher_module.squared_gradient_sums

    def out_of_memory_above_two(model, params, chunk, *args):
        seen.append(len(chunk))
        if len(chunk) > 2:
            raise torch.OutOfMemoryError("injected")
        return original(model, params, chunk, *args)

    monkeypatch.setattr(fisher_module, "squared_gradient_sums", out_of_memory_above_two)
    assert max_rel_error(fisher(model, x, batch_size=7), reference) <= 1e-5
    assert seen[:3] == [7, 3, 1]  # halved, then kept for the rest of the run
    assert set(seen[3:]) == {1}
    seen.clear()
    assert max_rel_error(fisher(model, x, batch_size=7, memory_budget_bytes=1), reference) <= 1e-5
    assert set(seen) == {1}  # a tiny budget: one image per chunk from the start

    monkeypatch.setattr(fisher_module, "squared_gradient_sums", lambda *args: out_of_memory_above_two(*args[:2], x))
    with pytest.raises(torch.OutOfMemoryError, match="fisher_memory_budget"):
        fisher(model, x[:1], batch_size=1)


def test_top_mass_groups_images_by_their_number_of_directions(monkeypatch):
    torch.manual_seed(0)
    model = randomise_norm_layers(ConvNet(classes=8)).double()
    with torch.no_grad():
        model.head.weight.mul_(10)
        model.head.bias.zero_()
    x = images(9) * torch.linspace(0.2, 3, 9, dtype=torch.float64).view(-1, 1, 1, 1)  # 3 or 4 classes cover 0.9
    shapes = []
    original = fisher_layers.squared_gradient_sums

    def spy(*args):
        sums, rest, directions = original(*args)
        shapes.append(directions.shape[:2])
        assert directions.flatten(2).any(-1).all()  # no zero padding costs a backward
        return sums, rest, directions

    monkeypatch.setattr(fisher_module, "squared_gradient_sums", spy)
    mass = 0.9

    def top_classes(probs):
        order = probs.argsort(descending=True)
        before = probs[order].cumsum(0) - probs[order]
        return order[before < mass].tolist()

    reference = brute_force_fisher(model, x, classes_of=top_classes)
    assert max_rel_error(fisher(model, x, batch_size=9, top_mass=mass), reference) <= 1e-5
    assert len({k for _, k in shapes}) > 1 and sum(b for b, _ in shapes) == len(x)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("estimator", ["exact", "mc"])
def test_an_interrupted_fisher_resumes_from_its_partial_sums(tmp_path, monkeypatch, estimator):
    torch.manual_seed(0)
    model = randomise_norm_layers(ConvNet()).double()
    x = images(8)
    batches = [(x[i : i + 2], None) for i in range(0, len(x), 2)]
    kwargs = {"estimator": estimator, "mc_samples": 2, "seed": 3, "show_progress": False}
    whole = compute_fisher_diagonal(model, batches, **kwargs)

    def interrupted_after(k):
        for index, batch in enumerate(batches):
            if index == k:
                raise Interrupted
            yield batch

    partial = str(tmp_path / "partial.safetensors")
    with pytest.raises(Interrupted):
        compute_fisher_diagonal(model, interrupted_after(3), partial_path=partial, checkpoint_seconds=0, **kwargs)
    seen = []
    original = fisher_module._BatchFisher.__call__
    monkeypatch.setattr(fisher_module._BatchFisher, "__call__", lambda self, *a: seen.append(1) or original(self, *a))
    resumed = compute_fisher_diagonal(model, batches, partial_path=partial, **kwargs)
    assert len(seen) == 1  # only the last batch was left
    assert all(torch.equal(resumed[n], whole[n]) for n in whole)


def test_autocast_runs_the_passes_in_bf16_and_sums_in_fp32():
    torch.manual_seed(0)
    model = randomise_norm_layers(ConvNet())
    x = images(4).float()
    full = fisher(model, x)
    mixed = fisher(model, x, autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert all(mixed[n].dtype == torch.float32 for n in mixed)
    assert 1e-6 < max_rel_error(mixed, {n: t.double() for n, t in full.items()}) <= 0.1
