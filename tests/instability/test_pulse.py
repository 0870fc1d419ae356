"""The pulse: every step's loss and gradient norms against a float64 autograd reference, on
unlogged steps too, with both arithmetics (numpy on the CPU, torch as on a GPU)."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gradscope
from gradscope.pulse import SAMPLE


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def batches(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)) for _ in range(n)]


def reference_trace(model: nn.Module, data, lr: float):
    """Per step: the loss and the total and per-parameter gradient norms, in float64 autograd."""
    ref = copy.deepcopy(model).double()
    opt = torch.optim.SGD(ref.parameters(), lr=lr)
    rows = []
    for x, y in data:
        loss = F.mse_loss(ref(x.double()), y.double())
        grads = torch.autograd.grad(loss, list(ref.parameters()))
        norms = [float(g.norm()) for g in grads]
        rows.append((float(loss.detach()), math.sqrt(sum(n * n for n in norms)), norms))
        for p, g in zip(ref.parameters(), grads):
            p.grad = g
        opt.step()
    return rows


@pytest.mark.parametrize("host_arithmetic", [None, False], ids=["numpy", "torch"])
def test_every_step_loss_and_gradient_norms_match_float64_autograd(host_arithmetic):
    model, data = small_mlp(), batches(12)
    expected = reference_trace(model, data, lr=0.05)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = gradscope.monitor(model, every=5, optimizer=opt)
    mon._host_arithmetic = host_arithmetic
    with mon:
        for x, y in data:
            F.mse_loss(model(x), y).backward()  # the loss comes from the tensor backward() is called on
            opt.step()
            opt.zero_grad()
    pulse = mon.pulse_history()
    assert pulse["step"].tolist() == list(range(12))  # every step, though only 0, 5, 10 are logged
    assert all(p.numel() <= SAMPLE for p in model.parameters())  # every element read: exact norms
    names = [n for n, _ in model.named_parameters()]
    for step, (loss, total, norms) in enumerate(expected):
        row = pulse.iloc[step]
        assert row["loss"] == pytest.approx(loss, rel=1e-5)
        assert row["grad_norm"] == pytest.approx(total, rel=1e-5)
        assert [row[f"grad_norm/{n}"] for n in names] == pytest.approx(norms, rel=1e-5)
    assert mon.events == []


class SparseBag(nn.Module):
    """An embedding with sparse gradients (40,000 weights, more than SAMPLE) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5000, 8, sparse=True)
        self.head = nn.Linear(8, 1)

    def forward(self, ids):
        return self.head(self.emb(ids).mean(1))


@pytest.mark.parametrize("host_arithmetic", [None, False], ids=["numpy", "torch"])
def test_a_sparse_gradient_is_read_whole_and_guarded(host_arithmetic):
    torch.manual_seed(0)
    model = SparseBag()
    g = torch.Generator().manual_seed(1)
    data = [(torch.randint(0, 5000, (16, 4), generator=g), torch.randn(16, 1, generator=g)) for _ in range(4)]
    ref = copy.deepcopy(model).double()
    expected = []
    for ids, y in data[:2]:
        grads = torch.autograd.grad(F.mse_loss(ref(ids), y.double()), list(ref.parameters()))
        expected.append([float(g.coalesce().values().norm()) if g.is_sparse else float(g.norm()) for g in grads])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the reference's weights stay as they are
    mon = gradscope.monitor(model, every=100, optimizer=opt, guard="skip")
    mon._host_arithmetic = host_arithmetic
    with mon:
        for step, (ids, y) in enumerate(data):
            loss = F.mse_loss(model(ids), y) * (float("nan") if step == 3 else 1.0)
            loss.backward()
            opt.step()
            opt.zero_grad()
    pulse = mon.pulse_history()
    for step, norms in enumerate(expected):
        assert [pulse.iloc[step][f"grad_norm/{n}"] for n in ("emb.weight", "head.weight", "head.bias")] \
            == pytest.approx(norms, rel=1e-5)
    assert mon.skipped_steps == [3]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_large_gradient_is_estimated_from_a_sample_within_a_few_percent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1))  # 65536 weights > SAMPLE
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 256), torch.randn(64, 1)
    with gradscope.monitor(model, every=1, optimizer=opt) as mon:
        F.mse_loss(model(x), y).backward()
        exact = float(model[0].weight.grad.double().norm())
        opt.step()
    estimate = mon.pulse_history()["grad_norm/0.weight"].iloc[0]
    assert estimate == pytest.approx(exact, rel=0.1)
    assert estimate != pytest.approx(exact, rel=1e-6)  # a sample, not the whole tensor


def test_the_loss_given_with_step_or_observe_loss_is_used_and_a_missing_loss_raises_nothing():
    model, data = small_mlp(), batches(6)
    with gradscope.monitor(model, every=1) as mon:
        for i, (x, y) in enumerate(data):
            loss = F.mse_loss(model(x), y)
            # gradients set by hand (no backward call): the loss does not arrive by itself
            for p, g in zip(model.parameters(), torch.autograd.grad(loss, list(model.parameters()))):
                p.grad = g
            if i % 2 == 0:
                mon.step(loss=loss * 10)
            else:
                mon.step()
    pulse = mon.pulse_history()
    assert np.isfinite(pulse["loss"].iloc[0]) and pulse["loss"].iloc[0] > 0
    assert np.isnan(pulse["loss"].iloc[1])  # no loss arrived: none is made up
    assert (pulse["alarm"] == 0).all() and mon.events == []


@pytest.mark.parametrize("given", ["step", "observe_loss"])
def test_per_sample_losses_are_refused_with_their_shape(given):
    model, data = small_mlp(), batches(1)
    with gradscope.monitor(model, every=1) as mon:
        x, y = data[0]
        per_sample = (model(x) - y).pow(2).mean(1)
        per_sample.mean().backward()
        with pytest.raises(gradscope.UsageError, match=r"shape \(8,\); pass the reduced loss"):
            mon.step(loss=per_sample) if given == "step" else mon.observe_loss(per_sample)
        mon.step(loss=per_sample.mean())  # the loop goes on with the scalar
    assert np.isfinite(mon.pulse_history()["loss"].iloc[0])


def test_gradient_accumulation_adds_the_micro_batches_losses():
    model, data = small_mlp(), batches(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    expected = []
    with gradscope.monitor(model, every=2, optimizer=opt) as mon:
        for i in range(0, 8, 4):
            total = 0.0
            for x, y in data[i:i + 4]:
                loss = F.mse_loss(model(x), y) / 4
                total += float(loss.detach())
                loss.backward()
            expected.append(total)
            opt.step()
            opt.zero_grad()
    pulse = mon.pulse_history()
    assert pulse["loss"].tolist() == pytest.approx(expected, rel=1e-6)
    assert pulse["micro_batches"].tolist() == [4, 4]


def test_a_copy_of_the_model_made_during_training_is_not_monitored():
    model, data = small_mlp(), batches(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.monitor(model, every=1, optimizer=opt) as mon:
        for x, y in data:
            loss = F.mse_loss(model(x), y)
            ema = copy.deepcopy(model)  # an EMA model, a checkpoint copy
            F.mse_loss(ema(x), y).backward()  # its backward reaches another model: not this loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    assert mon.pulse_history()["micro_batches"].tolist() == [1, 1, 1]


def test_a_gradient_past_float32_range_is_measured_in_float64_without_a_warning(recwarn):
    model = nn.Linear(4, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = gradscope.monitor(model, every=100, optimizer=opt)
    with mon:
        model(torch.ones(2, 4)).sum().backward()
        model.weight.grad.fill_(1e20)  # each square, 1e40, overflows float32
        opt.step()
    assert mon.pulse_history()["grad_norm"].iloc[0] == pytest.approx(2e20, rel=1e-6)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


class Wrapper(nn.Module):
    """A root whose own forward the loop never calls (as a LightningModule's training_step calls
    its layers)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_mlp()


@pytest.mark.parametrize("setup", ["compiled", "root never called", "eval-mode pass"])
@pytest.mark.filterwarnings("ignore:gradscope. the model is compiled")
def test_a_backward_that_is_not_the_models_training_loss_is_not_counted(setup):
    """Another model's backward (a probe, a teacher, a discriminator) or a gradient taken through
    the model in eval mode (a saliency map) is not this step's loss: counting it made a spike and,
    with the guard, skipped a healthy update."""
    torch._dynamo.reset()
    model = Wrapper() if setup == "root never called" else small_mlp()
    forward = model.net if setup == "root never called" else \
        torch.compile(model, backend="aot_eager") if setup == "compiled" else model
    other = nn.Linear(6, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    expected = []
    with gradscope.monitor(forward if setup == "compiled" else model, every=100, optimizer=opt,
                           guard="skip") as mon:
        for i, (x, y) in enumerate(batches(4)):
            if setup == "eval-mode pass" and i > 0:
                model.eval()
                saliency = x.clone().requires_grad_()
                (forward(saliency).pow(2).sum() * 1e4).backward()  # large, and through the model
                model.zero_grad()
                model.train()
            else:
                (other(x).pow(2).sum() * 1e4).backward()  # another model's, large
            loss = F.mse_loss(forward(x), y)
            expected.append(float(loss.detach()))
            loss.backward()
            opt.step()
            opt.zero_grad()
    pulse = mon.pulse_history()
    assert pulse["micro_batches"].tolist() == [1, 1, 1, 1]
    assert pulse["loss"].tolist() == pytest.approx(expected, rel=1e-6)
    assert mon.skipped_steps == []


@pytest.mark.filterwarnings("ignore:gradscope. .*no parameter had a gradient")
def test_a_root_never_called_keeps_counting_its_loss_after_its_layers_are_replaced():
    model = Wrapper()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    expected = []
    with gradscope.monitor(model, every=1) as mon:
        for i, (x, y) in enumerate(batches(4)):
            if i == 2:
                model.net = small_mlp()  # every parameter new: the old ones get no gradient again
                opt = torch.optim.SGD(model.parameters(), lr=0.01)
            loss = F.mse_loss(model.net(x), y)
            expected.append(float(loss.detach()))
            loss.backward()
            mon.step()
            opt.step()
            opt.zero_grad()
    losses = mon.pulse_history()["loss"].tolist()
    # the new layers are followed from the next logged step (docs/monitor.md): the step that
    # replaced them has no loss, every later one has it again
    assert np.isnan(losses[2])
    assert [losses[i] for i in (0, 1, 3)] == pytest.approx([expected[i] for i in (0, 1, 3)], rel=1e-6)


@pytest.mark.parametrize("host_arithmetic", [None, False], ids=["numpy", "torch"])
def test_half_precision_gradients_beside_float32_ones_are_read_in_float32(host_arithmetic):
    """A float16 layer beside float32 ones (one foreach norm per dtype): its gradient norm, past
    float16's largest value 65504, is read in float32 and matches float64 autograd."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Linear(16, 3))
    model[1].half()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = gradscope.monitor(model, every=5, optimizer=opt)
    mon._host_arithmetic = host_arithmetic
    expected = []
    with mon:
        for x, y in batches(3):
            out = model[1](model[0](x).half())
            loss = F.mse_loss(out.float(), y) * 1e5
            loss.backward()
            expected.append([float(p.grad.double().norm()) for p in model.parameters()])
            opt.step()
            opt.zero_grad()
    pulse = mon.pulse_history()
    names = [n for n, _ in model.named_parameters()]
    assert max(expected[0][2:]) > 65504  # the float16 layer's norm is past float16's range
    for step, norms in enumerate(expected):
        got = [pulse.iloc[step][f"grad_norm/{n}"] for n in names]
        assert got == pytest.approx(norms, rel=1e-3)  # float16 gradients, summed in float32


@pytest.mark.parametrize("host_arithmetic", [None, False], ids=["numpy", "torch"])
def test_a_complex_gradient_is_measured_as_its_modulus(host_arithmetic):
    """numpy views a complex gradient, and its dot with itself is Σa², not Σ|a|²: the CPU path
    must not take it. torch's norms with a real dtype refuse complex input, so the pulse and the
    step's grad_norm failed (a warning, no rows); they read it as real and imaginary parts now."""
    torch.manual_seed(0)

    class Complex(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, dtype=torch.cfloat))
            self.head = nn.Linear(3, 1)

        def forward(self, x):
            return (self.w * x).abs().pow(2).sum() + self.head(x.real).sum()

    model = Complex()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    expected = []
    mon = gradscope.monitor(model, every=1, optimizer=opt, guard="skip")
    mon._host_arithmetic = host_arithmetic
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with mon:
            for _ in range(4):
                opt.zero_grad()
                model(torch.randn(3, dtype=torch.cfloat)).backward()
                squares = [p.grad.abs().double().pow(2).sum() for p in model.parameters()]
                expected.append(float(sum(squares)) ** 0.5)
                opt.step()
    assert not [w for w in caught if "gradscope" in str(w.message)]
    assert mon.pulse_history()["grad_norm"].tolist() == pytest.approx(expected, rel=1e-5)
    assert mon.skipped_steps == []


def clip_in_place(params, how: str) -> None:
    if how == "value":
        torch.nn.utils.clip_grad_value_(params, 0.002)
    elif how == "norm imported early":
        clip_grad_norm_early(params, 0.05)
    else:
        torch.nn.utils.clip_grad_norm_(params, 0.05)


clip_grad_norm_early = torch.nn.utils.clip_grad_norm_  # bound before any monitor started
clip_grad_value_original = torch.nn.utils.clip_grad_value_


@pytest.mark.parametrize("host_arithmetic", [None, False], ids=["numpy", "torch"])
@pytest.mark.parametrize("how", ["norm", "norm imported early", "value", "accumulated", "scaler"])
def test_the_detector_and_grad_norm_read_the_gradients_before_the_loop_clips_them(how, host_arithmetic):
    """A loop that clips (clip_grad_norm_ at 0.05, far below these gradients, or clip_grad_value_)
    before optimizer.step(): the pulse's norms are the gradients the backward passes made, as
    float64 autograd has them before its own clipping (before, the detector saw the clipped norm,
    flat at the threshold, and missed every gradient spike); the logged grad_norm is what the
    optimizer got, after the clip."""
    model, data = small_mlp(), batches(8)
    micro = 2 if how == "accumulated" else 1
    ref = copy.deepcopy(model).double()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) if how == "scaler" else None
    mon = gradscope.monitor(model, every=2, optimizer=opt, **({"scaler": scaler} if scaler else {}))
    mon._host_arithmetic = host_arithmetic
    expected, clipped, after_clip = [], [], []
    with mon:
        for i in range(0, len(data), micro):
            for x, y in data[i:i + micro]:
                F.mse_loss(ref(x.double()), y.double()).div(micro).backward()
                loss = F.mse_loss(model(x), y) / micro
                (scaler.scale(loss) if scaler else loss).backward()
            expected.append([float(p.grad.norm()) for p in ref.parameters()])
            clip_in_place(list(ref.parameters()), "value" if how == "value" else "norm")
            after_clip.append([float(p.grad.norm()) for p in ref.parameters()])
            clipped.append(math.sqrt(sum(n * n for n in after_clip[-1])))
            ref_opt.step()
            ref_opt.zero_grad()
            if scaler:
                scaler.unscale_(opt)
            clip_in_place(model.parameters(), "norm" if how in ("accumulated", "scaler") else how)
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad()
    totals = [math.sqrt(sum(n * n for n in norms)) for norms in expected]
    assert all(t > 2 * c for t, c in zip(totals, clipped))  # the clipping changed the gradients
    pulse = mon.pulse_history()
    names = [n for n, _ in model.named_parameters()]
    assert pulse["grad_norm"].tolist() == pytest.approx(totals, rel=1e-5)
    for step, norms in enumerate(expected):
        assert [pulse.iloc[step][f"grad_norm/{n}"] for n in names] == pytest.approx(norms, rel=1e-5)
    logged = mon.to_dataframe().query("metric == 'grad_norm'").set_index(["step", "layer"]).value
    for step in range(0, len(expected), 2):
        assert [logged[(step, n)] for n in names] == pytest.approx(after_clip[step], rel=1e-4)
    # the clipping functions are torch's own again
    import torch.nn.utils.clip_grad as clip_grad
    assert torch.nn.utils.clip_grad_norm_ is clip_grad_norm_early
    assert clip_grad._clip_grads_with_norm_ is torch.nn.utils.clip_grads_with_norm_
    assert torch.nn.utils.clip_grad_value_ is clip_grad.clip_grad_value_ is clip_grad_value_original


def test_gradients_clipped_before_the_scaler_unscaled_them_are_read_unscaled_at_the_step():
    """Clipping before scaler.unscale_ clips the scaled gradients (the user's slip): the monitor
    does not read them there, scaled by the loss scale (which would look like an explosion),
    but at the step, unscaled, as before."""
    model, data = small_mlp(), batches(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    expected = []
    with gradscope.monitor(model, every=1, optimizer=opt, scaler=scaler) as mon:
        for x, y in data:
            scaler.scale(F.mse_loss(model(x), y)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 50.0)
            expected.append(math.sqrt(sum(float(p.grad.double().norm()) ** 2 for p in model.parameters())) / 2.0 ** 10)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
    assert mon.pulse_history()["grad_norm"].tolist() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("host_arithmetic", [None, False], ids=["numpy", "torch"])
def test_a_backward_with_create_graph_is_measured(host_arithmetic):
    """``loss.backward(create_graph=True)`` (a gradient penalty, a meta-learning step) leaves
    gradients that require grad themselves; before, the pulse and the step's statistics failed on
    them (a warning each step, no row, no grad_norm)."""
    model, data = small_mlp(), batches(6)
    expected = reference_trace(model, data, lr=0.05)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = gradscope.monitor(model, every=2, optimizer=opt)
    mon._host_arithmetic = host_arithmetic
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with mon:
            for x, y in data:
                F.mse_loss(model(x), y).backward(create_graph=True)
                opt.step()
                opt.zero_grad(set_to_none=True)  # breaks the gradient's reference cycle
    assert not [w for w in caught if "gradscope" in str(w.message)]
    pulse = mon.pulse_history()
    assert pulse["grad_norm"].tolist() == pytest.approx([total for _, total, _ in expected], rel=1e-5)
    logged = mon.to_dataframe().query("metric == 'grad_norm'").set_index(["step", "layer"]).value
    names = [n for n, _ in model.named_parameters()]
    for step in (0, 2, 4):
        assert [logged[(step, n)] for n in names] == pytest.approx(expected[step][2], rel=1e-5)


def test_a_huge_every_keeps_a_bounded_ring_and_every_steps_row():
    """every=10**8 ("log almost never") allocated 10**8 ring rows up front and ran out of
    memory; the ring now holds at most RING_ROWS rows, read whenever it has filled."""
    from gradscope.monitor import RING_ROWS

    model, data = small_mlp(), batches(RING_ROWS // 64 + 3)
    expected = reference_trace(model, data * 64, lr=0.05)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradscope.monitor(model, every=10 ** 8, optimizer=opt) as mon:
        for x, y in data * 64:
            F.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        assert mon._pulse.ring.shape[0] == RING_ROWS
    pulse = mon.pulse_history()
    assert pulse["step"].tolist() == list(range(len(expected)))  # more steps than rows, none lost
    assert pulse["loss"].tolist() == pytest.approx([loss for loss, _, _ in expected], rel=1e-4)


def test_a_misspelled_option_gets_the_closest_one():
    with pytest.raises(gradscope.UsageTypeError, match=r"unknown option evry=3.*Did you mean every=\?"):
        gradscope.monitor(small_mlp(), evry=3)


@pytest.mark.parametrize("host_arithmetic", [None, False], ids=["numpy", "torch"])
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_loss_the_scale_overflowed_is_unknown_not_non_finite(host_arithmetic):
    """A GradScaler's scale near float32's limit (2**127: a long bf16 run whose gradients never
    overflow doubles it every 2,000 steps) turns a finite loss into an Inf scaled loss. That step's
    loss is unknown (NaN, no alarm); before, each such step raised a non-finite loss and the
    guard held back every update the scaler let through."""
    model, data = small_mlp(), batches(12)
    data = [(x, y * 10) for x, y in data]  # losses near 100: 100 * 2**121 overflows float32
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 120, growth_interval=1)
    mon = gradscope.monitor(model, every=4, optimizer=opt, scaler=scaler, guard="skip")
    mon._host_arithmetic = host_arithmetic
    losses, overflowed, stepped = [], [], []
    with mon:
        for x, y in data:
            loss = F.mse_loss(model(x), y)
            scaled = scaler.scale(loss)
            losses.append(float(loss.detach().double()))
            overflowed.append(bool(torch.isinf(scaled)))
            scaled.backward()
            scale = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            stepped.append(scaler.get_scale() >= scale)  # not lowered: the scaler's update ran
            opt.zero_grad()
    # the scale doubles each step until the scaled gradients overflow; on some steps only the
    # scaled loss overflows, and the scaler makes the update
    assert any(o and s for o, s in zip(overflowed, stepped)) and not all(overflowed)
    pulse = mon.pulse_history()
    assert pulse["loss"].isna().tolist() == overflowed
    known = [loss for loss, o in zip(losses, overflowed) if not o]
    assert pulse["loss"].dropna().tolist() == pytest.approx(known, rel=1e-5)
    assert mon.events == []
    assert pulse["skipped"].sum() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("host_arithmetic", [None, False], ids=["numpy", "torch"])
def test_an_inf_loss_the_scale_cannot_have_made_is_non_finite(host_arithmetic, dtype):
    """A log(0) in the loss under a GradScaler at its usual scale: a float32 loss would have to
    pass 5e33 for 2**16 to overflow it, a float64 one cannot be overflowed at all, so the Inf is
    the loss's own and raises its alarm (the first version of the rule above took it for an
    overflow, and with the scaler's skip nothing fired)."""
    model = small_mlp().to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    mon = gradscope.monitor(model, every=4, optimizer=opt, scaler=scaler)
    mon._host_arithmetic = host_arithmetic
    with mon:
        for step, (x, y) in enumerate(batches(12)):
            loss = F.mse_loss(model(x.to(dtype)), y.to(dtype))
            if step == 8:
                loss = loss - torch.log(torch.zeros((), dtype=dtype))
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
    assert [(e.step, e.alarms) for e in mon.events] == [(8, ["non-finite loss"])]
    assert math.isinf(mon.pulse_history()["loss"].iloc[8])


@pytest.mark.parametrize("host_arithmetic", [None, False], ids=["numpy", "torch"])
def test_the_loss_is_taken_from_backward_when_the_model_returns_a_dataclass(host_arithmetic):
    """A model whose forward returns a dataclass (or any object the output hooks cannot look
    into): its backward passes still carry the loss; before, no loss was ever recorded."""
    import dataclasses

    @dataclasses.dataclass
    class Output:
        prediction: torch.Tensor

    class Wrapped(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            return Output(self.net(x))

    class Opaque:
        def __init__(self, prediction: torch.Tensor) -> None:
            self._hidden = {"p": prediction}

        def prediction(self) -> torch.Tensor:
            return self._hidden["p"]

    class WrappedOpaque(Wrapped):
        def forward(self, x):
            return Opaque(self.net(x))

    for kind in (Wrapped, WrappedOpaque):
        model, data = small_mlp(), batches(6)
        expected = reference_trace(model, data, lr=0.05)
        wrapped = kind(model)
        opt = torch.optim.SGD(wrapped.parameters(), lr=0.05)
        mon = gradscope.monitor(wrapped, every=2, optimizer=opt)
        mon._host_arithmetic = host_arithmetic
        with mon:
            for x, y in data:
                out = wrapped(x)
                prediction = out.prediction if kind is Wrapped else out.prediction()
                F.mse_loss(prediction, y).backward()
                opt.step()
                opt.zero_grad()
        losses = mon.pulse_history()["loss"].tolist()
        assert losses == pytest.approx([loss for loss, _, _ in expected], rel=1e-5), kind.__name__


@pytest.mark.parametrize("host_arithmetic", [None, False], ids=["numpy", "torch"])
def test_a_batch_the_loop_throws_away_is_not_added_to_the_next_step(host_arithmetic):
    """A loop that drops a bad batch after its backward (``opt.zero_grad(); continue``): before,
    its loss was added to the next step's, which then raised a false alarm and had its healthy
    update skipped by the guard."""
    model, data = small_mlp(), batches(80)
    data[70] = (data[70][0], data[70][1] * 1e4)  # a corrupt batch the loop drops itself
    kept = [b for i, b in enumerate(data) if i != 70]
    expected = reference_trace(model, kept, lr=0.05)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = gradscope.monitor(model, every=10, optimizer=opt, guard="skip")
    mon._host_arithmetic = host_arithmetic
    with mon:
        for x, y in data:
            loss = F.mse_loss(model(x), y)
            loss.backward()
            if loss.item() > 100:
                opt.zero_grad()
                continue
            opt.step()
            opt.zero_grad()
    pulse = mon.pulse_history()
    assert pulse["loss"].tolist() == pytest.approx([loss for loss, _, _ in expected], rel=1e-5)
    assert pulse["grad_norm"].tolist() == pytest.approx([total for _, total, _ in expected], rel=1e-5)
    assert mon.events == [] and mon.skipped_steps == []


def test_parameters_unfrozen_later_are_read_and_guarded():
    """A backbone frozen for the head's warm-up, then unfrozen: before, the pulse was never
    made (no parameter required grad at its first use) and spike detection and the guard were
    off for the whole run; a NaN gradient later went into the weights. Parameters unfrozen later
    join the pulse from the next logged step, with their own columns."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
    head = nn.Linear(16, 3)
    opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.05)
    data = batches(40)
    backbone.requires_grad_(False)
    backbone[2].requires_grad_(True)  # a partial unfreeze first, the rest later
    expected = []
    with gradscope.monitor(backbone, every=10, optimizer=opt, guard="skip") as mon:
        for step, (x, y) in enumerate(data):
            if step == 5:
                backbone.requires_grad_(True)
            F.mse_loss(head(backbone(x)), y).backward()
            if step == 35:
                backbone[0].weight.grad[0, 0] = float("nan")
            expected.append(math.sqrt(sum(float(p.grad.double().norm()) ** 2
                                          for p in backbone.parameters() if p.grad is not None)))
            opt.step()
            opt.zero_grad()
    assert all(torch.isfinite(p).all() for p in backbone.parameters())
    assert mon.skipped_steps == [35] and "non-finite gradient" in mon.events[0].alarms
    pulse = mon.pulse_history().set_index("step")
    assert pulse["grad_norm/0.weight"].loc[:10].isna().all()  # read from step 11 on
    assert pulse["grad_norm"].loc[11:34].tolist() == pytest.approx(expected[11:35], rel=1e-5)
    assert pulse["grad_norm"].loc[:4].tolist() == pytest.approx(expected[:5], rel=1e-5)


@pytest.mark.parametrize("call", ["autograd", "autograd list", "checkpoint"])
def test_the_loss_arrives_through_torch_autograd_backward_once(call):
    """``torch.autograd.backward(loss)`` (the functional form, and a list of one loss) carries the
    loss as ``loss.backward()`` does; before, no loss was recorded and loss alarms could not fire.
    A reentrant checkpoint, which calls it again inside the pass, is still one pass."""
    from torch.utils.checkpoint import checkpoint

    model, data = small_mlp(), batches(6)
    expected = reference_trace(model, data, lr=0.05)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    original = torch.autograd.backward
    with gradscope.monitor(model, every=2, optimizer=opt) as mon:
        for x, y in data:
            if call == "checkpoint":
                out = checkpoint(model, x.requires_grad_(), use_reentrant=True)
                F.mse_loss(out, y).backward()
            else:
                loss = F.mse_loss(model(x), y)
                torch.autograd.backward([loss] if call == "autograd list" else loss)
            opt.step()
            opt.zero_grad()
    assert torch.autograd.backward is original
    pulse = mon.pulse_history()
    assert pulse["loss"].tolist() == pytest.approx([loss for loss, _, _ in expected], rel=1e-5)
    assert pulse["micro_batches"].tolist() == [1.0] * len(data)


@pytest.mark.parametrize("given, expected", [
    (np.array([2.0]), 2.0), (np.array(2.0), 2.0), (np.float32(2.5), 2.5), (torch.tensor([1.5]), 1.5), (3, 3.0),
    ("1.0", r"a tensor or a real number but got str \('1.0'\)"),
    (torch.tensor(1 + 0j), r"a real number but got a torch.complex64 tensor"),
    ([1.0], r"a tensor or a real number but got list"),
])
def test_a_loss_given_as_one_real_number_of_any_kind_is_taken_and_others_are_refused(given, expected):
    """One element of a real type is a loss, whatever holds it (numpy's 1-element array was
    refused while its 0-d array and torch's 1-element tensor were taken); a string and a complex
    number were taken silently."""
    model, data = small_mlp(), batches(1)
    with gradscope.monitor(model, every=1) as mon:
        F.mse_loss(model(data[0][0]), data[0][1]).backward()
        if isinstance(expected, str):
            with pytest.raises(gradscope.UsageTypeError, match=expected):
                mon.observe_loss(given)
            return
        mon.observe_loss(given)
        mon.step()
    assert mon.pulse_history()["loss"].tolist() == [expected]


def test_two_parts_trained_in_turn_keep_one_detector_and_read_only_the_part_that_trains():
    """One monitored module whose two parts train in turn, the other frozen (Lightning's
    toggle_optimizer): the pulse reads both parts from the third step on and does not start
    over (its warm-up would never end); a frozen part's gradient, left from its last turn, reads 0.
    A spike at step 152 is caught."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"a": nn.Linear(8, 8), "b": nn.Linear(8, 1)})
    optimizers = {k: torch.optim.SGD(model[k].parameters(), lr=1e-3) for k in "ab"}
    x = torch.randn(32, 8)
    expected = []
    with gradscope.monitor(model, every=1) as mon:
        for step in range(160):
            turn = "ab"[step % 2]
            for name, part in model.items():
                part.requires_grad_(name == turn)
            optimizers[turn].zero_grad(set_to_none=True)
            loss = model["b"](torch.tanh(model["a"](x))).pow(2).mean() * (1000.0 if step == 152 else 1.0)
            loss.backward()
            expected.append(math.sqrt(sum(float(p.grad.double().norm()) ** 2 for p in model[turn].parameters())))
            mon.step()
            optimizers[turn].step()
    assert [(e.step, e.alarms) for e in mon.events] == [(152, ["loss spike", "gradient spike"])]
    pulse = mon.pulse_history()
    # step 1 (b's first turn) still reads a alone: a change is seen at the step's end
    assert pulse["grad_norm"].iloc[2:].tolist() == pytest.approx(expected[2:], rel=1e-5)


@pytest.mark.parametrize("host_arithmetic", [None, False], ids=["numpy", "torch"])
def test_the_short_last_batch_of_an_epoch_raises_no_spike_but_a_nan_in_it_still_does(host_arithmetic):
    """Epochs of 1,473 digits in batches of 64 end with a batch of one sample, whose loss is far
    more spread than a full batch's (here the hardest sample: a loss of several units where full
    batches average a tenth): it raised loss spikes that the guard skipped. Its values are still
    recorded as they are (against float64); a NaN in it still raises its alarm."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x_all = torch.tensor(digits.data[:1473], dtype=torch.float32) / 16
    y_all = torch.tensor(digits.target[:1473])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    epochs, losses, steps = 30, {}, []
    mon = gradscope.monitor(model, every=10, optimizer=opt, guard="skip")
    mon._host_arithmetic = host_arithmetic
    with mon:
        for epoch in range(epochs):
            order = torch.randperm(1473, generator=g).split(64)[:-1]
            with torch.no_grad():  # the last batch: the one sample the model gets most wrong
                hardest = F.cross_entropy(model(x_all), y_all, reduction="none").argmax()
            for index in [*order, hardest.reshape(1)]:
                x = x_all[index].clone()
                if epoch == epochs - 1 and len(index) == 1:
                    x[0, 0] = float("nan")
                if len(index) == 1:
                    losses[len(steps)] = float(F.cross_entropy(copy.deepcopy(model).double()(x.double()),
                                                               y_all[index]))
                steps.append(len(index))
                F.cross_entropy(model(x), y_all[index]).backward()
                opt.step()
                opt.zero_grad()
    small = [s for s, size in enumerate(steps) if size == 1]
    assert small == [23 + 24 * e for e in range(epochs)]
    assert [e.step for e in mon.events] == [small[-1]]
    assert mon.events[0].alarms == ["non-finite loss", "non-finite gradient"]
    assert mon.skipped_steps == [small[-1]]
    pulse = mon.pulse_history().set_index("step")
    assert pulse.loc[small[:-1], "loss"].tolist() == pytest.approx([losses[s] for s in small[:-1]], rel=1e-5)


@pytest.mark.parametrize("case, inputs, output, noisier", [
    ("an epoch's last batch of 1", (torch.zeros(1, 64),), torch.zeros(1, 10), True),
    ("a sequence-first batch of short sequences", (torch.zeros(4, 16, 8),), torch.zeros(16, 1), False),
    ("an EmbeddingBag's flat tokens of short texts", (torch.zeros(64, dtype=torch.long), torch.zeros(16)),
     torch.zeros(16, 4), False),
    ("images of a smaller resolution", (torch.zeros(8, 3, 16, 16),), torch.zeros(8, 10), False),
    ("fewer, longer sequences of as many tokens", (torch.zeros(4, 256, dtype=torch.long),),
     torch.zeros(4, 256, 50), False),
    ("a keyword-called model's short batch", (), {"loss": torch.tensor(1.0), "logits": torch.zeros(2, 32, 50)}, True),
    ("a sequence-first last batch of 1, padded to the usual length", (torch.zeros(40, 1, 8),), torch.zeros(1, 1), True),
])
def test_a_step_is_read_as_noisier_only_where_every_reading_of_its_batch_is_small(case, inputs, output, noisier):
    """The usual step: 64 samples of 64 features, 16 sequences of 40 steps, 16 texts of 640
    tokens, 8 images of 32x32, 16 sequences of 64 tokens, 64 sequences of 32 tokens. Four readings
    of a batch's size (the first input's and the first output's leading dimension and elements)
    each go wrong for some model; a step is read as noisier only where all it has fell."""
    from gradscope.monitor import _batch_sizes, _noise, _output_tensors

    usual = {"an epoch's last batch of 1": ((torch.zeros(64, 64),), torch.zeros(64, 10)),
             "a sequence-first batch of short sequences": ((torch.zeros(40, 16, 8),), torch.zeros(16, 1)),
             "an EmbeddingBag's flat tokens of short texts": ((torch.zeros(640, dtype=torch.long), torch.zeros(16)),
                                                               torch.zeros(16, 4)),
             "images of a smaller resolution": ((torch.zeros(8, 3, 32, 32),), torch.zeros(8, 10)),
             "fewer, longer sequences of as many tokens": ((torch.zeros(16, 64, dtype=torch.long),),
                                                           torch.zeros(16, 64, 50)),
             "a keyword-called model's short batch": ((), {"loss": torch.tensor(1.0),
                                                           "logits": torch.zeros(64, 32, 50)}),
             "a sequence-first last batch of 1, padded to the usual length": ((torch.zeros(40, 16, 8),),
                                                                              torch.zeros(16, 1))}[case]
    sizes = [float(n) for n in _batch_sizes(usual[0], _output_tensors(usual[1]))]
    noise = _noise(list(_batch_sizes(inputs, _output_tensors(output))), sizes)
    assert (noise > 1) == noisier, case
    if case == "an epoch's last batch of 1":
        assert noise == pytest.approx(8.0)  # sqrt(64 / 1): a mean over 1 term instead of 64


@pytest.mark.parametrize("host_arithmetic", [None, False], ids=["numpy", "torch"])
def test_a_thousandfold_spike_in_a_short_last_batch_is_still_caught(host_arithmetic):
    model, data = small_mlp(), batches(200)
    data = [(x, y) if i % 20 != 19 else (x[:1], y[:1]) for i, (x, y) in enumerate(data)]  # epochs of 20 batches
    data[159] = (data[159][0], data[159][1] * 1000)  # a corrupt target in a one-sample batch
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = gradscope.monitor(model, every=50, optimizer=opt, guard="skip")
    mon._host_arithmetic = host_arithmetic
    with mon:
        for x, y in data:
            F.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    assert [e.step for e in mon.events][:1] == [159] and mon.skipped_steps[:1] == [159]


@pytest.mark.parametrize("host_arithmetic", [None, False], ids=["numpy", "torch"])
def test_a_dry_run_before_training_does_not_set_the_usual_batch_size(host_arithmetic):
    """A forward of 1,024 samples before training (a dry run, a batch-size finder) was counted into
    the first step's batch: the next 27 steps read as small, went uncounted in the detector's
    warm-up, and a spike at step 60 was missed."""
    model, data = small_mlp(), batches(120)
    data[60] = (data[60][0], data[60][1] * 6)  # wrong targets: a loss about 30 times the usual
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = gradscope.monitor(model, every=50, optimizer=opt, guard="skip")
    mon._host_arithmetic = host_arithmetic
    with mon:
        model(torch.randn(1024, 6)).sum()  # the dry run, in train mode with gradients on
        for x, y in data:
            F.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    assert [e.step for e in mon.events][:1] == [60] and mon.skipped_steps[:1] == [60]
