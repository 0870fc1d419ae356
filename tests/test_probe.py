"""The recipe probe's numbers against independent float64 references: the curvature against the
top eigenvalue of the full Hessian (torch.autograd.functional.hessian), preconditioned for Adam;
update ratios and forward statistics against direct computation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gradscope
from gradscope.probe import _curvature, _finite_difference_product, _top_eigenvalue, run_probe
from gradscope.recipe import Recipe


def _small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)


def _reference_hessian(model: nn.Module, x, y) -> torch.Tensor:
    """The full Hessian of the loss in float64, by autograd on a flat parameter vector."""
    params = [p.detach().double() for p in model.parameters()]
    shapes = [p.shape for p in params]
    flat = torch.cat([p.reshape(-1) for p in params])
    def loss(vector):
        chunks, i = [], 0
        for shape in shapes:
            n = int(np.prod(shape))
            chunks.append(vector[i:i + n].reshape(shape))
            i += n
        h = torch.tanh(x.double() @ chunks[0].T + chunks[1])
        return F.cross_entropy(h @ chunks[2].T + chunks[3], y)

    return torch.autograd.functional.hessian(loss, flat)


def test_curvature_is_the_top_eigenvalue_of_the_hessian():
    model = _small_model()
    x, y = _data()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    value, method, _ = _curvature(lambda: F.cross_entropy(model(x), y), params, opt, Recipe.of(opt))
    expected = float(torch.linalg.eigvalsh(_reference_hessian(model, x, y)).max())
    assert method == "Hessian-vector products"
    assert value == pytest.approx(expected, rel=0.03)


def test_finite_differences_agree_with_the_hessian():
    model = _small_model()
    x, y = _data()
    params = list(model.parameters())
    matvec = _finite_difference_product(lambda: F.cross_entropy(model(x), y), params)
    expected = float(torch.linalg.eigvalsh(_reference_hessian(model, x, y)).max())
    assert _top_eigenvalue(matvec, params)[0] == pytest.approx(expected, rel=0.05)


def test_adam_curvature_is_preconditioned_by_its_second_moment():
    model = _small_model()
    x, y = _data()
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    for _ in range(3):  # build up exp_avg_sq, then measure at these weights
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    value, _, note = _curvature(lambda: F.cross_entropy(model(x), y), params, opt, Recipe.of(opt))
    scale = torch.cat([(1 / ((opt.state[p]["exp_avg_sq"].double() / (1 - 0.999 ** 3)).sqrt() + 1e-8)).reshape(-1)
                       for p in params])
    root = scale.sqrt()
    expected = float(torch.linalg.eigvalsh(root[:, None] * _reference_hessian(model, x, y) * root[None, :]).max())
    assert "preconditioned" in note
    assert value == pytest.approx(expected, rel=0.05)


def test_a_negative_dominant_eigenvalue_still_gives_the_largest_one():
    # diag(-3, 1, -1): power iteration finds -3 first; the shifted pass must give 1
    matrix = torch.diag(torch.tensor([-3.0, 1.0, -1.0]))
    param = torch.zeros(3)
    value, unresolved = _top_eigenvalue(lambda v: [matrix @ v[0]], [param])
    assert value == pytest.approx(1.0, rel=0.05) and unresolved is None


def test_an_unresolved_positive_top_eigenvalue_is_not_reported_as_negative():
    # the shifted spectrum 0 .. 1000.001: 20 iterations approach its top from below and end short
    # of it, so shifted back the estimate is negative while the top eigenvalue (0.001) is not
    eigenvalues = torch.cat([torch.tensor([-1000.0, 0.001]), torch.linspace(-999.0, -0.5, 200)]).double()
    value, unresolved = _top_eigenvalue(lambda v: [eigenvalues * v[0]], [torch.zeros(202, dtype=torch.float64)])
    assert value is None and "resolved no positive one" in unresolved


def _three_layers() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3))


def test_update_ratios_and_losses_match_a_plain_training_loop():
    model = _three_layers()
    twin = _three_layers()
    x, y = _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    dynamics = run_probe(model, lambda: F.cross_entropy(model(x), y), opt, Recipe.of(opt), 3, "loss_fn")
    reference = torch.optim.SGD(twin.parameters(), lr=0.5, momentum=0.9)
    losses, ratios = [], []
    weights = [twin[0].weight, twin[2].weight, twin[4].weight]
    for _ in range(3):
        reference.zero_grad()
        loss = F.cross_entropy(twin(x), y)
        losses.append(float(loss.detach()))
        loss.backward()
        before = [w.detach().double().clone() for w in weights]
        reference.step()
        ratios.append(float(np.median([float((w.detach().double() - b).norm() / b.norm())
                                       for w, b in zip(weights, before)])))
    assert dynamics.losses[:3] == pytest.approx(losses, rel=1e-5)
    assert dynamics.update_ratios == pytest.approx(ratios, rel=1e-4)
    assert len(dynamics.losses) == 4


def test_forward_similarity_is_the_mean_pairwise_correlation():
    model = nn.Sequential(nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 2))
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    dynamics = run_probe(model, lambda: model(x).square().mean(), opt, Recipe.of(opt), 1, "loss_fn")
    out = model[0](x).detach().double().numpy()
    corr = np.corrcoef(out)  # samples as rows: Pearson correlation between samples
    expected = (corr.sum() - len(out)) / (len(out) * (len(out) - 1))
    assert dynamics.similarity["0"] == pytest.approx(expected, rel=1e-9)
    lengths = np.log(np.linalg.norm(out, axis=1))
    assert dynamics.length_spread["0"] == pytest.approx(lengths.std(ddof=1), rel=1e-9)


def test_diagnose_restores_the_model_and_optimizer_after_the_probe():
    model = _small_model()
    x, y = _data()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    state = opt.state_dict()
    report = gradscope.diagnose(model, x, lambda out: F.cross_entropy(out, y), optimizer=opt)
    assert report.dynamics is not None and len(report.dynamics.losses) == 11
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert opt.state_dict()["state"] == state["state"]
    assert report.verdict.recipe["optimizer"] == "Adam" and not report.verdict.recipe["assumed"]


def test_probe_steps_zero_gives_a_verdict_from_the_findings_alone():
    model = _small_model()
    report = gradscope.diagnose(model, _data()[0], probe_steps=0)
    assert report.dynamics is None and report.verdict.recipe is None
    assert "no recipe probe ran" in report.verdict.message


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_probe_steps_must_be_a_count(value):
    with pytest.raises(gradscope.UsageError, match="probe_steps"):
        gradscope.diagnose(_small_model(), _data()[0], probe_steps=value)


def test_adadelta_is_preconditioned_by_its_own_step_per_unit_gradient():
    """Adadelta's step per unit gradient is sqrt(acc_delta + eps) / sqrt(square_avg + eps) (lr
    apart), which starts near sqrt(eps): the preconditioner must match the step the optimizer
    really takes. Reference: the next step's (-Δw) / (lr g) on a loss with a constant gradient."""
    from gradscope.probe import _preconditioner

    w = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    g = torch.tensor([0.5, -2.0, 1e-3, 3.0], dtype=torch.float64)
    opt = torch.optim.Adadelta([w], lr=1.0)
    for _ in range(200):  # square_avg settles at g², acc_delta at the steps' own size
        opt.zero_grad()
        (w * g).sum().backward()
        opt.step()
    [scale] = _preconditioner(opt, [w])
    before = w.detach().clone()
    opt.zero_grad()
    (w * g).sum().backward()
    opt.step()
    taken = (before - w.detach()) / g
    assert torch.allclose(scale, taken, rtol=0.02)
    # far from the 1 / sqrt(square_avg) of an RMSprop-style reading, 1 / |g| = 2, 0.5, 0.33 here
    assert float(scale[[0, 1, 3]].max()) < 0.1


def _digits(n: int = 512):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data[:n], dtype=torch.float32)
    return (x - x.mean(0)) / (x.std(0) + 1e-6), torch.tensor(digits.target[:n])


def test_the_constant_loss_is_the_best_of_the_constant_predictions_in_float64():
    """Against each constant prediction's cross-entropy computed by hand in float64: the mean
    logits, zero logits (ln C) and the log of the mean predicted distribution."""
    model = _small_model()
    x, y = _data()
    report = gradscope.diagnose(model, x, lambda out: F.cross_entropy(out, y),
                                optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with torch.no_grad():
        logits = model.double()(x.double())
    mean_logits = logits.mean(0, keepdim=True).expand_as(logits)
    mean_distribution = logits.softmax(-1).mean(0, keepdim=True).log().expand_as(logits)
    candidates = [F.cross_entropy(mean_logits, y), torch.tensor(np.log(3.0)), F.cross_entropy(mean_distribution, y)]
    expected = float(min(candidates))
    assert report.dynamics.constant_loss == pytest.approx(expected, rel=1e-5)
    assert report.dynamics.fit == pytest.approx(float(F.cross_entropy(logits, y)) / expected, rel=1e-5)
    assert not report.dynamics.fitted  # an untrained model does no better than a constant


@pytest.mark.parametrize("output, count", [
    (torch.randn(4, 3), 3),
    ((torch.randn(4, 3), torch.arange(4)), 3),
    ({"logits": torch.randn(4, 3), "mask": torch.ones(4, dtype=torch.bool)}, 3),
    (torch.randn(1, 3), 0),  # one sample: no batch to average
    (torch.arange(4), 0),  # no floating-point output
    (object(), 0),  # an output type it does not know
])
def test_constant_outputs_average_every_floating_tensor_of_a_batch(output, count):
    from gradscope.probe import constant_outputs

    constants = constant_outputs(output)
    assert len(constants) == count
    for constant in constants:
        tensor = constant if isinstance(constant, torch.Tensor) else \
            constant[0] if isinstance(constant, tuple) else constant["logits"]
        assert torch.equal(tensor, tensor[:1].expand_as(tensor))  # the same for every sample


def test_a_trained_model_is_not_predicted_to_stall():
    """A model trained to fit digits (Adam), diagnosed under SGD: its gradients are small because
    its loss is, so its updates are far below 1e-3 of the weights. That is a fitted model, not a
    stalled one: the finding is information and the verdict trains. The same recipe from
    initialisation at a learning rate 1e4x smaller keeps the error."""
    x, y = _digits()
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(64, 64), nn.Tanh())], nn.Linear(64, 10))
    fresh = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(64, 64), nn.Tanh())], nn.Linear(64, 10))
    fresh.load_state_dict(model.state_dict())
    adam = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        adam.zero_grad()
        F.cross_entropy(model(x), y).backward()
        adam.step()
    with torch.no_grad():
        loss = float(F.cross_entropy(model(x), y))
    assert loss < 0.01  # fitted, checked by plain autograd
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    report = gradscope.diagnose(model, x, lambda out: F.cross_entropy(out, y), optimizer=sgd)
    assert report.dynamics.fitted and report.dynamics.fit == pytest.approx(loss / report.dynamics.constant_loss)
    [stalled] = [f for f in report.findings if f.rule == "updates-off-band"]
    assert stalled.severity == "info" and "already fits the probe batch" in stalled.message
    assert report.verdict.label == "trains" and "already fits the batch" in report.verdict.message
    slow = torch.optim.SGD(fresh.parameters(), lr=5e-6, momentum=0.9)
    report = gradscope.diagnose(fresh, x, lambda out: F.cross_entropy(out, y), optimizer=slow)
    assert not report.dynamics.fitted and report.verdict.label == "fails"
    assert [f.severity for f in report.findings if f.rule == "updates-off-band"] == ["error"]


def test_the_constant_loss_reaches_a_loss_that_views_the_logits():
    """nanoGPT's loss flattens the logits with ``.view``, which an expanded tensor refuses."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 16), nn.Linear(16, 20))
    x = torch.randint(0, 20, (8, 12))
    report = gradscope.diagnose(model, x, lambda out: F.cross_entropy(out.view(-1, 20), x.view(-1)),
                                optimizer=torch.optim.AdamW(model.parameters(), lr=3e-4))
    counts = torch.bincount(x.view(-1), minlength=20).double()
    frequencies = counts / counts.sum()
    entropy = float(-(frequencies[counts > 0] * frequencies[counts > 0].log()).sum())
    # the best constant is at most the uniform guess and at least the tokens' entropy
    assert entropy - 1e-4 <= report.dynamics.constant_loss <= np.log(20) + 1e-4


def _reference_ratios(net: nn.Module, optimizer, weights: list, x, y, steps: int) -> list[float]:
    """Per step of a plain training loop, the median over ``weights`` of ||Δw|| / ||w|| (float64)."""
    ratios = []
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        before = [w.detach().double().clone() for w in weights]
        optimizer.step()
        ratios.append(float(np.median([float((w.detach().double() - b).norm() / b.norm())
                                       for w, b in zip(weights, before)])))
    return ratios


def test_update_ratios_leave_out_weights_the_recipe_does_not_train():
    """A head-only optimizer (linear probing), a trunk at a hundredth of the head's learning rate,
    and an unused head: the median update ratio is that of the weights the recipe trains, by
    plain autograd in float64; the others do not move by design."""
    x, y = _data()

    def groups(net: nn.Module, case: str) -> list[dict]:
        head, trunk = list(net[4].parameters()), list(net[0].parameters()) + list(net[2].parameters())
        unused = list(net.unused.parameters()) if hasattr(net, "unused") else []
        if case == "head only":
            return [{"params": head}]
        if case == "slow trunk":
            return [{"params": trunk, "lr": 0.005}, {"params": head + unused}]
        return [{"params": trunk + head + unused}]

    for case in ("head only", "slow trunk", "unused head"):
        model, twin = _three_layers(), _three_layers()
        model.add_module("unused", nn.Linear(6, 3))  # a second head the loss never reads
        opt = torch.optim.SGD(groups(model, case), lr=0.5)
        dynamics = run_probe(model, lambda: F.cross_entropy(model[:5](x), y), opt, Recipe.of(opt), 2, "loss_fn")
        trained = [twin[4].weight] if case != "unused head" else [twin[0].weight, twin[2].weight, twin[4].weight]
        ratios = _reference_ratios(twin, torch.optim.SGD(groups(twin, case), lr=0.5), trained, x, y, 2)
        assert dynamics.update_ratios == pytest.approx(ratios, rel=1e-4), case
        assert set(dynamics.weight_update_ratios) == {n for n, p in twin.named_parameters()
                                                      if any(p is w for w in trained)}, case


def test_parameter_groups_give_the_largest_learning_rate_and_say_the_smallest():
    model = _three_layers()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 1e-5},
                           {"params": list(model[2].parameters()) + list(model[4].parameters()), "momentum": 0.5}],
                          lr=0.05, momentum=0.9)
    recipe = Recipe.of(opt)
    assert (recipe.lr, recipe.lr_smallest, recipe.momentum) == (0.05, 1e-5, 0.5)
    assert recipe.text() == "SGD lr 0.05 (down to 1e-05 in other parameter groups) momentum 0.5"
    assert Recipe.of(torch.optim.SGD(model.parameters(), lr=0.05)).lr_smallest is None


def test_a_slow_group_counts_for_the_curvature_by_its_share_of_the_learning_rate():
    """With the first layer's group at a tenth of the learning rate, the curvature is the top
    eigenvalue of D^1/2 H D^1/2, D the groups' shares of the largest rate (float64 Hessian)."""
    model = _small_model()
    x, y = _data()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.01}, {"params": model[2].parameters()}], lr=0.1)
    value, _, note = _curvature(lambda: F.cross_entropy(model(x), y), list(model.parameters()), opt, Recipe.of(opt))
    shares = torch.tensor([0.1] * (6 * 5 + 6) + [1.0] * (3 * 6 + 3), dtype=torch.float64).sqrt()
    hessian = _reference_hessian(model, x, y)
    expected = float(torch.linalg.eigvalsh(shares[:, None] * hessian * shares[None, :]).max())
    assert value == pytest.approx(expected, rel=0.03) and "share of the largest learning rate" in note


def test_adam_curvature_leaves_out_a_parameter_no_gradient_reached():
    """An unused head has no Adam state: Adam does not move it, so its preconditioner is 0 and
    the curvature is that of the used parameters (before, it was not measured at all)."""
    model = _small_model()
    model.add_module("unused", nn.Linear(3, 3))
    x, y = _data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    dynamics = run_probe(model, lambda: F.cross_entropy(model[:3](x), y), opt, Recipe.of(opt), 2, "loss_fn")
    assert dynamics.curvature is not None and dynamics.curvature > 0


def test_a_warm_up_schedule_is_probed_at_its_peak_and_left_where_it_was():
    """A LambdaLR warm-up holds SGD's lr at 5e-4 of its 0.5: the probe runs at the peak (its
    update ratios are those of a plain SGD at 0.5 from the same weights, by plain autograd), says
    so, and hands the optimizer and its schedule back at 5e-4."""
    x, y = _data()
    model, twin = _three_layers(), _three_layers()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 1000))
    report = gradscope.diagnose(model, x, lambda out: F.cross_entropy(out, y), optimizer=opt, probe_steps=2)
    ratios = _reference_ratios(twin, torch.optim.SGD(twin.parameters(), lr=0.5),
                               [twin[0].weight, twin[2].weight, twin[4].weight], x, y, 2)
    assert report.dynamics.update_ratios == pytest.approx(ratios, rel=1e-4)
    assert "lr 0.5 (its schedule's peak; 0.0005 now)" in report.verdict.message
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4) and schedule.get_last_lr() == pytest.approx([5e-4])
    # the probe's steps went through the schedule's step wrapper: the optimizer is still unstepped
    again = gradscope.diagnose(model, x, lambda out: F.cross_entropy(out, y), optimizer=opt, probe_steps=2)
    assert again.verdict.message == report.verdict.message and "_opt_called" not in vars(opt)


def test_a_sparse_gradient_is_probed():
    """nn.EmbeddingBag(sparse=True) under SGD: the probe reads the sparse gradient's stored values
    (before, it raised and the verdict rested on the findings alone)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.EmbeddingBag(500, 16, mode="mean", sparse=True), nn.Linear(16, 4))
    x, y = torch.randint(0, 500, (32, 10)), torch.arange(32) % 4
    report = gradscope.diagnose(model, x, lambda out: F.cross_entropy(out, y),
                                optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert report.dynamics is not None and "probe_error" not in report.options
    assert report.dynamics.grad_norms[0] > 0
    with pytest.raises(gradscope.UsageError, match=r"'0.weight' has a sparse gradient .* Leave clip_grad_norm out"):
        gradscope.diagnose(model, x, lambda out: F.cross_entropy(out, y), clip_grad_norm=1.0,
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def test_a_probe_that_raises_says_why_in_the_verdict():
    """An optimizer whose second step raises (the monitored step is its first, the probe's its
    second): the report keeps the monitored step's findings, and the verdict names the error."""
    class FailsLater(torch.optim.SGD):
        calls = 0

        def step(self, closure=None):
            FailsLater.calls += 1
            if FailsLater.calls > 1:
                raise RuntimeError("the optimizer's own bug\nwith a second line")
            return super().step(closure)

    model = _three_layers()
    x, y = _data()
    report = gradscope.diagnose(model, x, lambda out: F.cross_entropy(out, y),
                                optimizer=FailsLater(model.parameters(), lr=0.1))
    assert report.dynamics is None
    assert "no recipe probe ran (it raised RuntimeError: the optimizer's own bug; the verdict rests" \
        in report.verdict.message


def test_a_schedule_decayed_mid_run_is_probed_at_the_rate_it_holds():
    """An optimizer that has stepped is mid-run: a rate below its schedule's initial one is the
    decay (StepLR from 0.5 to 5e-4 after three steps), and the probe runs at it."""
    x, y = _data()
    model = _three_layers()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        schedule.step()
    report = gradscope.diagnose(model, x, lambda out: F.cross_entropy(out, y), optimizer=opt, probe_steps=2)
    assert report.dynamics.recipe.lr == pytest.approx(5e-4) and report.dynamics.recipe.scheduled_from is None


def test_a_recipe_that_trains_no_weight_is_said_to_stall():
    """AdamW given only the biases (the no-decay group alone): no weight matrix moves, and the
    update ratios say 0 rather than leaving every weight out."""
    x, y = _data()
    model = _three_layers()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.dim() == 1], lr=1e-3)
    report = gradscope.diagnose(model, x, lambda out: F.cross_entropy(out, y), optimizer=opt)
    assert report.dynamics.update_ratios == [0.0] * 10
    assert report.verdict.label == "fails" and "GS108 updates-off-band" in report.verdict.reasons


class _Wrapper(torch.optim.Optimizer):
    """A framework's optimizer wrapper, as accelerate's AcceleratedOptimizer: an Optimizer that
    never ran Optimizer.__init__ and steps the optimizer it holds."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def step(self, closure=None):
        return self.optimizer.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)


def test_a_frameworks_optimizer_wrapper_is_read_through():
    """The Hugging Face Trainer's trainer.optimizer (a wrapper) and Lightning's self.optimizers():
    diagnose reads the recipe of the optimizer inside (Adam, not a momentum SGD) and the monitor
    follows its steps (before, both raised AttributeError on the wrapper)."""
    x, y = _data()
    model = _three_layers()
    inner = torch.optim.AdamW(model.parameters(), lr=1e-3)
    report = gradscope.diagnose(model, x, lambda out: F.cross_entropy(out, y), optimizer=_Wrapper(inner))
    assert report.dynamics.recipe.optimizer == "AdamW" and report.dynamics.recipe.adaptive
    wrapper = _Wrapper(inner)
    with gradscope.monitor(model, optimizer=wrapper, every=1) as mon:
        for _ in range(3):
            wrapper.zero_grad()
            F.cross_entropy(model(x), y).backward()
            wrapper.step()
    assert sorted(mon.to_dataframe().step.unique()) == [0, 1, 2]
    lightning = pytest.importorskip("pytorch_lightning.core.optimizer")
    report = gradscope.diagnose(model, x, lambda out: F.cross_entropy(out, y),
                                optimizer=lightning.LightningOptimizer(inner))
    assert report.dynamics.recipe.optimizer == "AdamW"


def test_the_curvature_is_measured_through_a_reentrant_checkpoint():
    """torch.utils.checkpoint(use_reentrant=True) (Hugging Face's default for gradient
    checkpointing) refuses autograd.grad, so the curvature was not measured; it is now measured by
    finite differences of gradients read from backward(), and matches the float64 Hessian's."""
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(nn.Module):
        def __init__(self):
            super().__init__()
            self.i, self.b, self.o = nn.Linear(8, 16), nn.Sequential(nn.Linear(16, 16), nn.Tanh()), nn.Linear(16, 3)
            self.checkpointed = True

        def forward(self, x):
            h = self.i(x)
            return self.o(checkpoint(self.b, h, use_reentrant=True) if self.checkpointed else self.b(h))

    torch.manual_seed(0)
    model, x = Checkpointed(), torch.randn(8, 8)
    report = gradscope.diagnose(model, x, loss_fn=lambda out, inp: out.pow(2).mean(), probe_steps=1)
    assert report.dynamics.curvature is not None, report.dynamics.curvature_note
    twin = copy.deepcopy(model).double()
    twin.checkpointed = False  # the reference: plain autograd, in float64
    params = list(twin.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def loss(vector):
        chunks, at = [], 0
        for p in params:
            chunks.append(vector[at:at + p.numel()].view_as(p))
            at += p.numel()
        names = [n for n, _ in twin.named_parameters()]
        out = torch.func.functional_call(twin, dict(zip(names, chunks)), (x.double(),))
        return out.pow(2).mean()

    top = float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat)).max())
    assert report.dynamics.curvature == pytest.approx(top, rel=2e-2)
