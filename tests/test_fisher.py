"""The diagonal Fisher against brute-force, one image and one class at a time."""

import torch
from fisher_reference import brute_force_fisher, max_rel_error
from tiny_models import DictDataset, TinyConvNet, random_images, trained_bn_stats
from torch.utils.data import DataLoader

from hf_pbu import compute_fisher_diagonal
from hf_pbu.objective.fisher import load_or_compute_fisher


def setup(num_classes=4, n=10, seed=0):
    torch.manual_seed(seed)
    images = random_images(n, seed=seed)
    model = trained_bn_stats(TinyConvNet(num_classes), images)
    labels = torch.randint(0, num_classes, (n,), generator=torch.Generator().manual_seed(seed))
    return model, images, labels


def loader(images, labels, batch_size=4):
    return DataLoader(DictDataset(images, labels), batch_size=batch_size)


def test_exact_fisher_matches_brute_force_with_batchnorm_and_any_class_count():
    for num_classes in (3, 5):
        model, images, labels = setup(num_classes)
        fisher = compute_fisher_diagonal(model, loader(images, labels), estimator="exact", show_progress=False)
        reference = brute_force_fisher(model.double(), images.double())
        model.float()
        assert set(fisher) == {n for n, _ in model.named_parameters()}
        assert all(fisher[n].dtype == torch.float32 for n in fisher)
        assert max_rel_error(fisher, reference) <= 1e-5


def test_fisher_is_not_the_square_of_the_batch_gradient():
    model, images, labels = setup()
    fisher = compute_fisher_diagonal(model, loader(images, labels, batch_size=10), show_progress=False)
    # Squaring a batch-summed gradient is a different quantity: make sure that is not what we return.
    log_probs = model(images).log_softmax(-1)
    probs = log_probs.exp().detach()
    batch_grads = torch.autograd.grad((probs * log_probs).sum() / len(images), list(model.parameters()))
    wrong = {n: g.pow(2) for (n, _), g in zip(model.named_parameters(), batch_grads)}
    assert max_rel_error(fisher, {n: w.double() for n, w in wrong.items()}) > 0.1


def test_empirical_fisher_uses_the_true_labels():
    model, images, labels = setup()
    fisher = compute_fisher_diagonal(model, loader(images, labels), estimator="empirical", show_progress=False)
    reference = brute_force_fisher(model.double(), images.double(), labels)
    model.float()
    assert max_rel_error(fisher, reference) <= 1e-5
    other = compute_fisher_diagonal(model, loader(images, (labels + 1) % 4), estimator="empirical",
                                    show_progress=False)
    assert max_rel_error(other, reference) > 1e-2


def test_mc_fisher_converges_to_exact_as_samples_grow():
    model, images, labels = setup(n=6)
    exact = compute_fisher_diagonal(model, loader(images, labels), estimator="exact", show_progress=False)
    exact = {n: t.double() for n, t in exact.items()}
    errors = [
        max_rel_error(
            compute_fisher_diagonal(model, loader(images, labels), "mc", mc_samples=s, seed=1, show_progress=False),
            exact,
        )
        for s in (4, 2000)
    ]
    assert errors[1] < errors[0]
    assert errors[1] < 0.1


def test_fisher_restores_each_module_mode():
    model, images, labels = setup()
    model.train()
    model.features[1].eval()  # a deliberately frozen BatchNorm must stay frozen
    running_mean = model.features[1].running_mean.clone()
    compute_fisher_diagonal(model, loader(images, labels), show_progress=False)
    assert model.training and model.features[0].training
    assert not model.features[1].training
    assert torch.equal(model.features[1].running_mean, running_mean)  # eval mode: statistics untouched


def test_fisher_cache_is_reused_and_keyed_by_weights(tmp_path):
    model, images, labels = setup()
    dataset = DictDataset(images, labels)
    calls = []

    def make_loader():
        calls.append(1)
        return DataLoader(dataset, batch_size=4)

    first, seconds, source = load_or_compute_fisher(model, dataset, make_loader, str(tmp_path))
    again, cached_seconds, cached_source = load_or_compute_fisher(model, dataset, make_loader, str(tmp_path))
    assert len(calls) == 1 and (source, cached_source) == ("computed", "cached")
    assert seconds > 0 and cached_seconds == seconds  # the time it took when computed, not the time to read it
    assert all(torch.equal(first[n], again[n]) for n in first)
    with torch.no_grad():
        model.head.bias += 1.0
    load_or_compute_fisher(model, dataset, make_loader, str(tmp_path))
    assert len(calls) == 2
    assert len(list(tmp_path.glob("fisher-*.safetensors"))) == 2
    assert not list(tmp_path.glob("*.partial-*"))  # the running sums are removed once the Fisher is cached
