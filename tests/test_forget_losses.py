"""The forget terms (`hf_pbu.objective.forget_losses`): each against autograd of its written formula, the bounded ones'
gradients vanishing once an image is forgotten, several forget classes at once, and the stop rules ending runs."""

import copy

import pytest
import torch
import torch.nn.functional as F
from tiny_models import DictDataset, TinyConvNet, random_images, trained_bn_stats

from hf_pbu import PBUConfig, PBUTrainer
from hf_pbu.objective.forget_losses import TERMS, ForgetBatch, build_forget_loss

NUM_CLASSES = 5
FORGET = torch.tensor([1, 3])
TAU = 0.7
DISTILL_WEIGHT = 0.4


def written_formula(name: str, logits: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Each term as its docstring writes it, image by image, with plain probabilities (no log-sum-exp tricks)."""
    p, p_ref = logits.softmax(-1), reference.softmax(-1)
    retained = [c for c in range(NUM_CLASSES) if c not in FORGET.tolist()]
    values = []
    for i, y in enumerate(labels.tolist()):
        if name == "neg_ce":
            values.append(torch.log(p[i, y]))
        elif name == "npo":
            values.append(2 / TAU * torch.log(1 + (p[i, y] / p_ref[i, y]) ** TAU))
        elif name == "complement":
            values.append(-torch.log(1 - p[i, y]))
        elif name == "relabel":
            target = max(retained, key=lambda c: reference[i, c].item())
            values.append(-torch.log(p[i, target]))
        else:  # distill
            q = torch.exp(reference[i, retained]) / torch.exp(reference[i, retained]).sum()
            values.append(sum(q_c * torch.log(q_c / p[i, c]) for q_c, c in zip(q, retained)))
    return torch.stack(values)


def written_loss(name: str, logits, labels, reference) -> torch.Tensor:
    weights = {"distill": DISTILL_WEIGHT}
    return sum(weights.get(part, 1.0) * written_formula(part, logits, labels, reference)
               for part in name.split("+")).mean()


@pytest.fixture(scope="module")
def tiny():
    """A tiny model, its images and labels among the two forget classes, and a perturbed copy as the 'original'."""
    torch.manual_seed(0)
    images = random_images(12)
    model = trained_bn_stats(TinyConvNet(NUM_CLASSES), images).double()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.3 * torch.randn_like(p))
    labels = FORGET[torch.arange(12) % 2]
    return model, reference, images.double(), labels


@pytest.mark.parametrize("name", [*TERMS, "npo+distill", "complement+distill", "relabel+distill", "npo+complement"])
def test_loss_and_gradient_match_autograd_of_the_written_formula(tiny, name):
    model, reference, images, labels = tiny
    with torch.no_grad():
        reference_logits = reference(images)
    params = list(model.parameters())
    loss = build_forget_loss(name, npo_tau=TAU, distill_weight=DISTILL_WEIGHT)
    logits = model(images)

    value = loss(ForgetBatch(logits, labels, reference_logits, FORGET))
    expected = written_loss(name, logits, labels, reference_logits)

    torch.testing.assert_close(value, expected)
    for got, want in zip(torch.autograd.grad(value, params, retain_graph=True), torch.autograd.grad(expected, params)):
        torch.testing.assert_close(got, want)


def test_neg_ce_is_the_papers_term():
    logits, labels = torch.randn(6, NUM_CLASSES), torch.randint(0, NUM_CLASSES, (6,))
    torch.testing.assert_close(build_forget_loss("neg_ce")(ForgetBatch(logits, labels)),
                               -F.cross_entropy(logits, labels))


def forgotten_logits(name: str, reference: torch.Tensor, labels: torch.Tensor, s: float) -> torch.Tensor:
    """Logits with p(y|x) -> 0 as s grows; on the retained classes, the term's own target (the reference's
    distribution for distill, its retained argmax with a margin s for relabel, anything for npo and complement)."""
    logits = reference.clone()
    if name == "relabel":
        masked = reference.index_fill(-1, FORGET, float("-inf"))
        margin = torch.full((len(labels), 1), s, dtype=logits.dtype)
        logits.scatter_add_(-1, masked.argmax(-1, keepdim=True), margin)
    return logits.index_fill(-1, FORGET, -s)


@pytest.mark.parametrize("name", [name for name, term in TERMS.items() if term.bounded])
def test_bounded_terms_gradient_vanishes_as_the_image_is_forgotten(name):
    torch.manual_seed(0)
    reference, labels = torch.randn(4, NUM_CLASSES, dtype=torch.float64), FORGET[torch.arange(4) % 2]
    loss = build_forget_loss(name, npo_tau=TAU, distill_weight=1.0)
    norms = []
    for s in (2.0, 8.0, 32.0):
        logits = forgotten_logits(name, reference, labels, s).requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(ForgetBatch(logits, labels, reference, FORGET)), logits)
        norms.append(grad.norm().item())
    assert norms[0] > norms[1] > norms[2] and norms[2] < 1e-8, norms


def test_neg_ce_gradient_does_not_vanish():
    """The contrast: -CE keeps pushing an image that is already forgotten."""
    labels = torch.tensor([1])
    logits = torch.tensor([[0.0, -32.0, 1.0, 0.0, 0.0]], requires_grad=True)
    (grad,) = torch.autograd.grad(build_forget_loss("neg_ce")(ForgetBatch(logits, labels)), logits)
    assert grad.norm() > 0.9


def test_relabel_and_distill_exclude_every_forget_class():
    """The reference's best class after the label is the other forget class: relabel must skip it, distill give it
    no mass."""
    reference = torch.tensor([[0.0, 5.0, 1.0, 4.0, 2.0]])
    labels = torch.tensor([1])
    logits = torch.zeros(1, NUM_CLASSES, requires_grad=True)
    batch = ForgetBatch(logits, labels, reference, FORGET)
    (grad,) = torch.autograd.grad(build_forget_loss("relabel")(batch), logits)
    assert grad[0].argmin() == 4  # pulled up: class 4, the best retained class, not class 3
    (grad,) = torch.autograd.grad(build_forget_loss("distill", distill_weight=1.0)(batch), logits)
    assert (grad[0, FORGET] > 0).all()  # both forget classes pushed down


def test_unknown_or_repeated_terms_are_refused():
    for name in ("ga", "npo+npo", "npo+"):
        with pytest.raises(ValueError, match="forget_loss"):
            build_forget_loss(name)


def forget_run(tmp_path, forget_loss: str, labels: torch.Tensor, forget_classes=None, recognised=False,
               **kwargs) -> PBUTrainer:
    """`recognised`: the model predicts the forget classes first, as a trained one does."""
    torch.manual_seed(0)
    images = random_images(len(labels))
    model = trained_bn_stats(TinyConvNet(NUM_CLASSES), images)
    if recognised:
        with torch.no_grad():
            model.head.bias[labels.unique()] += 1.0
    settings = dict(learning_rate=1e-2, num_train_epochs=40, per_device_train_batch_size=8, fisher_cache_dir="none",
                    save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, forget_level="output")
    config = PBUConfig(output_dir=str(tmp_path), forget_loss=forget_loss, **{**settings, **kwargs})
    trainer = PBUTrainer(model=model, args=config, train_dataset=DictDataset(images, labels),
                         forget_classes=forget_classes)
    trainer.original = copy.deepcopy(model)
    trainer.train()
    return trainer


@pytest.mark.parametrize("name", ["npo", "complement", "relabel+distill"])
def test_plateau_rule_ends_bounded_runs_on_several_forget_classes(tmp_path, name):
    trainer = forget_run(tmp_path, name, FORGET[torch.arange(32) % 2])

    assert trainer.stop_rule == "plateau"
    assert trainer.stop_state.stopped_at_step == trainer.state.global_step < trainer.state.max_steps
    assert trainer.stop_state.forget_train_accuracy_history[-1][0] == trainer.stop_state.stopped_at_step
    assert len(trainer.stop_state.plateau_history) > PBUConfig.stop_plateau_patience
    if trainer.forget_loss.needs_forget_classes:
        assert trainer._forget_classes.tolist() == FORGET.tolist()
    if trainer.forget_loss.needs_reference:  # the frozen original, untouched by training
        original = trainer.original.state_dict()
        assert all(torch.equal(v, original[k]) for k, v in trainer._reference.state_dict().items())
        assert not any(p.requires_grad for p in trainer._reference.parameters())


def test_accuracy_rule_still_ends_a_bounded_run_when_asked(tmp_path):
    trainer = forget_run(tmp_path, "complement", FORGET[torch.arange(32) % 2], stop_rule="forget_accuracy",
                         learning_rate=0.2, recognised=True)

    assert trainer.stop_state.stopped_at_step and trainer.stop_state.forget_train_accuracy_history[-1][1] <= 0.5


def test_given_forget_classes_override_the_labels_and_no_copy_without_need(tmp_path):
    with_field = forget_run(tmp_path / "a", "distill", torch.ones(16, dtype=torch.long), forget_classes=[1, 3])
    without_reference = forget_run(tmp_path / "b", "complement", torch.ones(16, dtype=torch.long))

    assert with_field._forget_classes.tolist() == [1, 3]
    assert without_reference._reference is None and without_reference._forget_classes is None
    output = {"output_dir": str(tmp_path), "forget_level": "output"}
    assert PBUConfig(**output, forget_loss="neg_ce").resolved_stop_rule == "forget_accuracy"
    assert PBUConfig(**output).resolved_stop_rule == "plateau"
    default = PBUConfig(output_dir=str(tmp_path))
    assert default.forget_loss == "complement+distill" and default.forget_level == "head"
    assert default.resolved_stop_rule == "ranked_last"
    assert PBUConfig(output_dir=str(tmp_path), forget_level="features").resolved_stop_rule == "plateau"
    with pytest.raises(ValueError, match="ranked_last"):
        PBUConfig(**output, stop_rule="ranked_last")
