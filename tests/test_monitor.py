"""Every statistic of gradscope.monitor against the float64 autograd reference in tests/reference.py."""

from __future__ import annotations

import functools
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim.optimizer as optimizer_module

import gradscope
import gradscope.hooks
from gradscope.stats import reductions
from tests import models
from tests.reference import reference

LR = 0.1


def call(model, x):
    if isinstance(x, tuple):
        return model(*x)
    if isinstance(x, dict):
        return model(**x)
    return model(x)


def mse(out, y):
    return F.mse_loss(out, y)


def train_and_compare(model, make_batch, loss_fn=mse, steps=2, every=1, micro=1,
                      functional=None, unit_dims=None, weights_every=1):
    """Train ``steps`` SGD steps under the monitor; compare each logged step with the reference."""
    torch.manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    expected = {}
    with gradscope.monitor(model, every=every, optimizer=opt, weights_every=weights_every) as mon:
        for step in range(steps):
            batches = [make_batch() for _ in range(micro)]
            if step % every == 0:
                expected[step] = reference(model, batches, loss_fn, lr=LR,
                                           functional=functional, unit_dims=unit_dims)
                if not mon.weights_logged(step):
                    expected[step] = {k: v for k, v in expected[step].items()
                                      if k[1] not in ("weight_norm", "update_ratio")}
            for x, y in batches:
                loss_fn(call(model, x), y).backward()
            opt.step()
            opt.zero_grad()
    df = mon.to_dataframe()
    assert list(df.columns) == ["step", "layer", "metric", "value"]
    assert sorted(df.step.unique().tolist()) == sorted(expected)
    for step, exp in expected.items():
        rows = df[df.step == step]
        got = {(r.layer, r.metric): r.value for r in rows.itertuples()}
        assert len(got) == len(rows), "a (layer, metric) appears twice in one step"
        assert set(got) == set(exp), (
            f"step {step}: missing {sorted(set(exp) - set(got))}, extra {sorted(set(got) - set(exp))}"
        )
        assert_close(got, exp, step)
    return df


def assert_close(got, exp, step=0):
    """Relative 2e-4, and float32 round-off relative to the metric's largest value in the step
    (a gradient that is zero in exact arithmetic comes out near 1e-8 in float32)."""
    scale = {}
    for (_, metric), value in exp.items():
        if value == value and abs(value) != float("inf"):
            scale[metric] = max(scale.get(metric, 0.0), abs(value))
    for key, value in exp.items():
        weight = exp.get((key[0], "weight_norm"), 1.0)
        if key[1] == "update_ratio" and weight < 1e-6 * scale.get("weight_norm", 0.0):
            continue  # a ratio of float32 round-off to a weight that is zero in exact arithmetic
        tol = 1e-5 * scale.get(key[1], 0.0) + 1e-12
        assert got[key] == pytest.approx(value, rel=2e-4, abs=tol), (step, key)


def batch(*shape, out=3):
    return lambda: (torch.randn(*shape), torch.randn(shape[0], out))


def test_mlp_every_step():
    torch.manual_seed(0)
    df = train_and_compare(models.mlp(), batch(32, 6), steps=3)
    # the mix of activations produced each kind of statistic
    assert {"dead_fraction", "saturation", "update_ratio"} <= set(df.metric)


def test_the_gpu_form_of_the_sums_of_squares_matches_the_reference(monkeypatch):
    """On a GPU a sum of squares is queued as a norm and squared at the step end with the step's
    other partials; that path, run on the CPU, against the float64 reference."""
    monkeypatch.setattr(gradscope.hooks, "sum_of_squares_partial",
                        functools.partial(reductions.sum_of_squares_partial, on_host=False))
    torch.manual_seed(0)
    df = train_and_compare(models.conv_bn(), batch(8, 3, 6, 6), steps=2)
    assert {"act_rms", "out_grad_norm", "dead_fraction"} <= set(df.metric)


def test_every_n_logs_steps_0_n_2n():
    torch.manual_seed(0)
    df = train_and_compare(models.mlp(), batch(16, 6), steps=7, every=3)
    assert sorted(df.step.unique().tolist()) == [0, 3, 6]


def test_weights_are_recorded_every_weights_every_steps():
    df = train_and_compare(models.mlp(), batch(32, 6), steps=7, every=1, weights_every=3)
    assert sorted(df[df.metric == "update_ratio"].step.unique()) == [0, 3, 6]
    assert sorted(df[df.metric == "weight_norm"].step.unique()) == [0, 3, 6]
    assert sorted(df[df.metric == "grad_norm"].step.unique()) == list(range(7))


def test_conv_net_with_batchnorm():
    torch.manual_seed(0)
    train_and_compare(models.conv_bn(), batch(8, 3, 6, 6), steps=2)


def test_conv1d_units_are_channels():
    torch.manual_seed(0)
    model = models.SequenceConv()
    with torch.no_grad():
        model.conv.bias[:3] = -100.0  # three of six channels can never fire
    df = train_and_compare(model, lambda: (torch.randn(8, 4, 5), torch.randn(8, 2)),
                           unit_dims={"act": 1})
    dead = df[(df.layer == "act") & (df.metric == "dead_fraction")].value
    assert dead.iloc[0] == pytest.approx(0.5)


def test_lstm():
    torch.manual_seed(0)
    train_and_compare(models.LSTMRegressor(), lambda: (torch.randn(4, 6, 5), torch.randn(4, 2)))


def test_transformer_encoder_with_functional_relu():
    torch.manual_seed(0)
    functional = {
        f"encoder.layers.{i}:relu#0": (f"encoder.layers.{i}.linear1", "dead", torch.relu)
        for i in range(2)
    }
    df = train_and_compare(models.TinyTransformer(),
                           lambda: (torch.randn(4, 5, 16), torch.randn(4, 4)),
                           functional=functional)
    assert "encoder.layers.1:relu#0" in set(df.layer)


def test_tuple_and_dict_inputs_and_outputs():
    torch.manual_seed(0)

    def make():
        return {"x": torch.randn(6, 5), "scale": torch.tensor(2.0)}, torch.randn(6, 2)

    functional = {"pair:tanh#0": ("pair.b", (-1.0, 1.0), torch.tanh)}
    train_and_compare(models.TupleDictModel(), make, loss_fn=lambda out, y: mse(out["logits"], y),
                      functional=functional)


def test_inplace_relu():
    torch.manual_seed(0)
    train_and_compare(models.inplace_relu(), batch(16, 6, out=2))


def test_shared_modules_add_up_over_calls():
    torch.manual_seed(0)
    model = models.Shared()
    with torch.no_grad():
        model.inp.bias.fill_(100.0)  # the 8 units of the first call site always fire
        model.wide.bias.fill_(-100.0)  # the 16 units of the second never do
    df = train_and_compare(model, batch(16, 6, out=2), steps=1)
    dead = df[(df.layer == "act") & (df.metric == "dead_fraction")].value.iloc[0]
    assert dead == pytest.approx(16 / 24)


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointing_counts_each_forward_once(reentrant):
    torch.manual_seed(0)
    train_and_compare(models.Checkpointed(reentrant), batch(8, 5, out=2))


def test_gradient_accumulation_is_one_step():
    torch.manual_seed(0)
    df = train_and_compare(models.mlp(), batch(8, 6), steps=3, micro=3)
    assert sorted(df.step.unique().tolist()) == [0, 1, 2]


def test_functional_activations_named_by_calling_module():
    torch.manual_seed(0)
    functional = {
        "relu#0": ("fc1", "dead", torch.relu),
        "sigmoid#0": ("inner", (0.0, 1.0), torch.sigmoid),
        "inner:tanh#0": ("inner.fc", (-1.0, 1.0), torch.tanh),
        "inner:relu#0": ("inner.fc2", "dead", torch.relu),
    }
    train_and_compare(models.Functional(), batch(16, 6, out=2), functional=functional)


class NewGELUActivation(nn.Module):
    """Hugging Face's GPT-2 GELU: a tanh inside, which is part of the GELU, not an activation."""

    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608 * (x + 0.044715 * torch.pow(x, 3.0))))


def test_a_function_inside_an_activation_module_is_not_an_activation_of_its_own():
    model = nn.Sequential(nn.Linear(6, 8), NewGELUActivation(), nn.Linear(8, 2), nn.Tanh())
    with gradscope.monitor(model, every=1) as mon:
        model(torch.randn(4, 6)).sum().backward()
        mon.step()
        layers = mon.to_dataframe()["layer"].unique().tolist()
    assert not [name for name in layers if "tanh#" in name]
    assert "3" in layers  # the Tanh module is still tracked


def test_frozen_parameters_are_not_reported():
    torch.manual_seed(0)
    model = models.mlp()
    for p in model[0].parameters():
        p.requires_grad_(False)
    df = train_and_compare(model, batch(16, 6))
    assert "0.weight" not in set(df.layer)


def test_nonfinite_gradients_are_counted_not_dropped():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x = torch.randn(5, 3)
    with gradscope.monitor(model, optimizer=opt) as mon:
        out = model(x)
        out.register_hook(lambda g: g * torch.tensor([[float("nan")], [1.0], [1.0], [float("inf")], [1.0]]))
        out.sum().backward()
        opt.step()
    df = mon.to_dataframe().set_index(["layer", "metric"]).value
    # NaN and Inf in two of five samples reach every element of 1.weight's gradient
    ref = model[1].weight.grad
    assert df[("1.weight", "grad_nonfinite")] == float((~torch.isfinite(ref)).sum()) == 4.0
    assert df[("0.weight", "grad_nonfinite")] == float((~torch.isfinite(model[0].weight.grad)).sum())
    assert df[("0.weight", "grad_nonfinite")] > 0
    assert not torch.isfinite(torch.tensor(df[("1.weight", "grad_norm")]))


def test_eval_and_no_grad_forwards_are_not_logged():
    torch.manual_seed(0)
    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    expected = reference(model, [(x, y)], mse, lr=LR)
    with gradscope.monitor(model, optimizer=opt) as mon:
        mse(model(x), y).backward()
        model.eval()
        with torch.no_grad():
            model(torch.randn(64, 6) * 10)  # validation in the middle of the step
        model.train()
        with torch.no_grad():
            model(torch.randn(64, 6) * 10)  # a no-grad forward in train mode
        opt.step()
    got = mon.to_dataframe().set_index(["layer", "metric"]).value.to_dict()
    assert set(got) == set(expected)
    assert_close(got, expected)


def test_without_optimizer_mon_step_ends_steps():
    torch.manual_seed(0)
    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    expected = reference(model, [(x, y)], mse)
    with gradscope.monitor(model, every=2) as mon:
        for _ in range(3):
            mse(model(x), y).backward()
            mon.step()
            opt.step()
            opt.zero_grad()
    df = mon.to_dataframe()
    assert sorted(df.step.unique().tolist()) == [0, 2]
    got = df[df.step == 0].set_index(["layer", "metric"]).value.to_dict()
    assert set(got) == set(expected)  # no update_ratio without an optimizer
    assert_close(got, expected)


def test_mon_step_after_zero_grad_warns_and_keeps_module_statistics():
    model = models.mlp()
    with pytest.warns(gradscope.GradscopeWarning, match="before optimizer.step"):
        with gradscope.monitor(model) as mon:
            model(torch.randn(4, 6)).sum().backward()
            model.zero_grad()
            mon.step()
    assert "out_grad_norm" in set(mon.to_dataframe().metric)


def test_dead_fraction_counts_units_dead_for_every_sample():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([-1.0, 1.0, -2.0, 0.5]))
    with gradscope.monitor(model) as mon:
        model(torch.randn(10, 4)).sum().backward()
        mon.step()
    df = mon.to_dataframe().set_index(["layer", "metric"]).value
    assert df[("1", "dead_fraction")] == 0.5


def test_one_nan_sample_does_not_make_every_unit_dead():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([-1.0, 1.0, -2.0, 0.5]))
    x = torch.randn(10, 4)
    x[3, 0] = float("nan")  # sample 3's outputs are NaN in every unit (0 * NaN)
    with gradscope.monitor(model) as mon:
        model(x).sum().backward()
        mon.step()
    df = mon.to_dataframe().set_index(["layer", "metric"]).value
    # units 0 and 2 are below zero on the nine finite samples, but NaN on the tenth: not known
    # dead, so not counted (every unit of the layer, 1.0, before)
    assert df[("1", "dead_fraction")] == 0.0


def test_layers_added_or_replaced_mid_run_are_recorded_from_the_next_logged_step():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step():
        model(torch.randn(16, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    registration_hooks = len(torch.nn.modules.module._global_module_registration_hooks)
    with gradscope.monitor(model, optimizer=opt) as mon:
        step()
        model[1] = nn.Tanh()  # replaced
        model.append(nn.Linear(2, 2))  # added, with new parameters
        opt.add_param_group({"params": model[3].parameters()})
        step()
        step()
    df = mon.to_dataframe()
    at = {s: set(zip(g.layer, g.metric)) for s, g in df.groupby("step")}
    assert ("1", "dead_fraction") in at[0] and ("3", "act_rms") not in at[0]
    # step 1 was armed before the change; from step 2 on the new layers are recorded
    assert ("1", "saturation") in at[2] and ("3", "act_rms") in at[2]
    grad = df[(df.step == 2) & (df.layer == "3.weight") & (df.metric == "grad_norm")].value
    assert len(grad) == 1 and grad.iloc[0] > 0
    types = dict(zip(mon.layers.layer, mon.layers.type))
    assert types["1"] == "Tanh" and types["3"] == "Linear" and types["3.weight"] == "Linear"
    # removed at stop
    assert len(torch.nn.modules.module._global_module_registration_hooks) == registration_hooks


@pytest.mark.parametrize("passing", ["positional", "keyword"])
def test_a_closure_step_records_what_a_plain_step_records(passing):
    """``optimizer.step(closure)``: the statistics are taken when the closure's first evaluation
    returns, aligned with the step, without a warning about missing gradients."""
    torch.manual_seed(0)
    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    batches = [(torch.randn(16, 6), torch.randn(16, 3)) for _ in range(3)]
    expected = {}
    with gradscope.monitor(model, optimizer=opt, weights_every=1) as mon:
        for step, (x, y) in enumerate(batches):
            expected[step] = reference(model, [(x, y)], mse, lr=LR)

            def closure():
                opt.zero_grad()
                loss = mse(model(x), y)
                loss.backward()
                return loss

            opt.step(closure) if passing == "positional" else opt.step(closure=closure)
    df = mon.to_dataframe()
    assert sorted(df.step.unique().tolist()) == [0, 1, 2]
    for step, exp in expected.items():
        got = df[df.step == step].set_index(["layer", "metric"]).value.to_dict()
        assert set(got) == set(exp)
        assert_close(got, exp, step)


def test_a_closure_without_backward_is_named_in_the_warning():
    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    with pytest.warns(gradscope.GradscopeWarning, match="when its first evaluation returned.*inside the closure"):
        with gradscope.monitor(model, optimizer=opt):
            opt.step(lambda: mse(model(torch.randn(4, 6)), torch.randn(4, 3)))


def test_attach_optimizer_before_the_step_follows_it_from_that_step():
    torch.manual_seed(0)
    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    expected = reference(model, [(x, y)], mse, lr=LR)
    with gradscope.monitor(model, weights_every=1) as mon:
        mse(model(x), y).backward()
        mon.attach_optimizer(opt)  # the optimizer has not stepped yet: its step ends step 0
        opt.step()
        opt.zero_grad()
    got = mon.to_dataframe().set_index(["layer", "metric"]).value.to_dict()
    assert set(got) == set(expected)  # update_ratio included
    assert_close(got, expected)


def test_attach_optimizer_after_the_step_ends_the_step_there():
    torch.manual_seed(0)
    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    batches = [(torch.randn(16, 6), torch.randn(16, 3)) for _ in range(2)]
    expected = []
    with gradscope.monitor(model, weights_every=1) as mon:
        for x, y in batches:
            expected.append(reference(model, [(x, y)], mse, lr=LR))
            mse(model(x), y).backward()
            opt.step()
            mon.attach_optimizer(opt)
            opt.zero_grad()
    df = mon.to_dataframe()
    got = [df[df.step == s].set_index(["layer", "metric"]).value.to_dict() for s in (0, 1)]
    # step 0: its update was made before the monitor followed the optimizer, and weight_norm
    # reads the updated weights (as mon.step() after optimizer.step() does)
    step0 = {k: v for k, v in expected[0].items() if k[1] not in ("update_ratio", "weight_norm")}
    assert {k for k in got[0] if k[1] != "weight_norm"} == set(step0)
    assert_close(got[0], step0)
    assert set(got[1]) == set(expected[1])
    assert_close(got[1], expected[1], 1)


def test_attach_optimizer_is_idempotent_and_says_what_it_needs():
    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    global_hooks = len(optimizer_module._global_optimizer_post_hooks)
    mon = gradscope.monitor(model)
    mon.attach_optimizer(opt)  # before start: as optimizer= would
    with mon:
        assert len(optimizer_module._global_optimizer_post_hooks) == global_hooks
        mon.attach_optimizer(opt)
        assert len(opt._optimizer_step_pre_hooks) == len(opt._optimizer_step_post_hooks) == 1
        with pytest.raises(gradscope.UsageError, match="already follows a SGD, and one monitor follows one optimizer"):
            mon.attach_optimizer(torch.optim.Adam(model.parameters()))
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    with gradscope.monitor(models.mlp()) as mon:
        with pytest.raises(gradscope.UsageTypeError,
                           match="Expected `optimizer` to be a torch.optim.Optimizer but got NoneType; pass"):
            mon.attach_optimizer(None)
        with pytest.raises(gradscope.UsageTypeError, match="but got dict"):
            mon.attach_optimizer({"lr": 0.1})
        with pytest.raises(gradscope.UsageError, match=r"The optimizer \(SGD, 10 parameters\) owns none"):
            mon.attach_optimizer(opt)
        assert mon.optimizer is None
        assert len(optimizer_module._global_optimizer_post_hooks) == global_hooks + 1
    assert len(optimizer_module._global_optimizer_post_hooks) == global_hooks  # no trace


def test_paused_forwards_and_their_backward_are_not_recorded():
    torch.manual_seed(0)
    model = models.mlp()
    (x1, y1), (x2, y2) = [(torch.randn(16, 6), torch.randn(16, 3)) for _ in range(2)]
    modules_only = reference(model, [(x2, y2)], mse)
    parameters = reference(model, [(x1, y1), (x2, y2)], mse)
    with gradscope.monitor(model) as mon:
        with mon.paused(), mon.paused():
            out = model(x1)
        assert mon.hooks.paused == 0
        mse(out, y1).backward()  # outside the block: still not recorded
        mse(model(x2), y2).backward()
        mon.step()
    got = mon.to_dataframe().set_index(["layer", "metric"]).value.to_dict()
    expected = {k: v for k, v in modules_only.items() if k[1] in ("act_rms", "out_grad_norm", "dead_fraction", "saturation")}
    expected.update({k: v for k, v in parameters.items() if k[1] in ("grad_norm", "weight_norm", "grad_nonfinite")})
    assert set(got) == set(expected)
    assert_close(got, expected)


def test_a_monitor_that_recorded_no_step_gives_no_verdict_and_judges_nothing():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with gradscope.monitor(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01)) as mon:
        pass
    report = mon.report()
    assert report.verdict is None and report.findings == [] and report.coverage.checked == []
    assert report.no_findings_text == "No findings: nothing could be judged (no step was recorded)."
    assert json.loads(report.to_json())["verdict"] is None


def test_per_sample_gradients_from_torch_func_are_recorded_at_the_step(recwarn):
    """DP-SGD's loop: per-sample gradients by vmap(grad(...)) over functional_call, clipped per
    sample and set by hand. The module hooks ran inside the transform on its wrapped tensors and
    failed (a warning per layer), and the step's buffer with them: no row at all. Now the forward
    inside a transform is not recorded and the gradients the loop sets are, at the step."""
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(8, 6), torch.randn(8, 3)

    def one_loss(params, xi, yi):
        return F.mse_loss(functional_call(model, params, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    expected = []
    with gradscope.monitor(model, every=1, optimizer=opt, guard="skip") as mon:
        for _ in range(4):
            params = {n: p.detach() for n, p in model.named_parameters()}
            per_sample = vmap(grad(one_loss), in_dims=(None, 0, 0))(params, x, y)
            for n, p in model.named_parameters():
                p.grad = per_sample[n].mean(0)
            expected.append({n: float(p.grad.double().norm()) for n, p in model.named_parameters()})
            opt.step()
    assert not [w for w in recwarn if "gradscope" in str(w.message)]
    history = mon.to_dataframe()
    norms = history[history.metric == "grad_norm"]
    for step, by_name in enumerate(expected):
        for name, value in by_name.items():
            got = norms[(norms.step == step) & (norms.layer == name)].value
            assert len(got) == 1 and float(got.iloc[0]) == pytest.approx(value, rel=1e-5), (step, name)


def test_a_with_block_inside_another_of_the_same_monitor_leaves_it_running():
    """Before, the inner block's exit stopped the monitor and the outer block's later steps were
    silently not recorded."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def train(mon, steps):
        with mon:
            for _ in range(steps):
                F.mse_loss(model(torch.randn(8, 4)), torch.randn(8, 1)).backward()
                opt.step()
                opt.zero_grad()

    mon = gradscope.monitor(model, every=1, optimizer=opt)
    with mon:
        train(mon, 2)
        train(mon, 3)
    assert sorted(mon.to_dataframe().step.unique()) == list(range(5))
    assert not mon._active


def test_a_torchscript_submodule_is_named_in_a_warning():
    """A torch.jit.script'ed part runs no Python hooks: its module statistics were missing
    without a word. Its parameters' gradient norms are still recorded, against float64."""
    import warnings

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(16, 16)

        def forward(self, x):
            return x + torch.relu(self.l(x))

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated
        model = nn.Sequential(nn.Linear(8, 16), torch.jit.script(Block()), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 8)
    with pytest.warns(gradscope.GradscopeWarning, match=r"1 submodule\(s\) of the model are TorchScript \('1'\)"):
        with gradscope.monitor(model, optimizer=opt) as mon:
            model(x).pow(2).mean().backward()
            opt.step()
    df = mon.to_dataframe()
    twin = nn.Sequential(nn.Linear(8, 16), Block(), nn.Linear(16, 3)).double()
    twin.load_state_dict({k: v.double() for k, v in model.state_dict().items()}, strict=False)
    with torch.no_grad():
        for (name, p), (_, q) in zip(twin.named_parameters(), model.named_parameters()):
            p.copy_(q)  # the weights before the step: the step moved model's, so undo it by lr * grad
            p.add_(q.grad.double(), alpha=0.01)
    twin(x.double()).pow(2).mean().backward()
    recorded = df[(df.metric == "grad_norm") & (df.layer == "1.l.weight")]["value"].item()
    assert recorded == pytest.approx(float(twin[1].l.weight.grad.norm()), rel=1e-5)
