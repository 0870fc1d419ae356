"""torch.compile: parameter statistics on a compiled model, no graph break in its forward, and a
warning that the module statistics need eager mode."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gradscope
from gradscope import GradscopeWarning
from tests import models
from tests.reference import reference


def train(model, params, steps=3):
    opt = torch.optim.SGD(params, lr=0.05)
    with gradscope.monitor(model, optimizer=opt, weights_every=1) as mon:
        for i in range(steps):
            g = torch.Generator().manual_seed(i)
            F.mse_loss(model(torch.randn(16, 6, generator=g)), torch.randn(16, 3, generator=g)).backward()
            opt.step()
            opt.zero_grad()
    return mon.to_dataframe()


@pytest.mark.parametrize("in_place", [False, True], ids=["torch.compile(model)", "model.compile()"])
def test_compiled_model_gets_parameter_statistics_without_graph_breaks(in_place):
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = models.mlp()
    twin = models.mlp()
    twin.load_state_dict(eager.state_dict())
    # fullgraph=True raises on any graph break, our hooks' included; model.compile() compiles in
    # place, as Hugging Face's torch_compile=True does
    if in_place:  # (fullgraph=True finds no frame to compile in an in-place nn.Sequential, with or without us)
        twin.compile(backend="aot_eager")
        compiled = twin
    else:
        compiled = torch.compile(twin, backend="aot_eager", fullgraph=True)
    with pytest.warns(GradscopeWarning, match="compiled with torch.compile, so only parameter statistics"):
        got = train(compiled, twin.parameters())
    expected = train(eager, eager.parameters())
    assert set(got.metric) == {"grad_norm", "grad_nonfinite", "weight_norm", "update_ratio"}
    params = expected[expected.metric.isin(set(got.metric))].set_index(["step", "layer", "metric"]).value
    assert sorted(got.layer.unique()) == sorted(n for n, _ in eager.named_parameters())  # no "_orig_mod."
    assert got.set_index(["step", "layer", "metric"]).value.sort_index().to_numpy() == pytest.approx(
        params.sort_index().to_numpy(), rel=1e-5)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in twin.modules())


def test_uncompiled_original_still_gets_everything():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    compiled = torch.compile(model, backend="aot_eager")
    g = torch.Generator().manual_seed(0)  # the batch train() draws for step 0
    x, y = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)
    expected = reference(model, [(x, y)], F.mse_loss, lr=0.05)
    df = train(model, model.parameters(), steps=1)  # monitoring model._orig_mod, the eager module
    got = df.set_index(["layer", "metric"]).value.to_dict()
    assert {"out_grad_norm", "dead_fraction", "act_rms"} <= set(df.metric)
    assert set(got) == set(expected)
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-7)
    # the compiled wrapper still runs, through the trained weights and without the monitor's hooks
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())
    probe = torch.randn(4, 6)
    torch.testing.assert_close(compiled(probe), model(probe))


def test_a_nan_in_a_compiled_model_is_not_placed_where_no_statistic_was_taken():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = models.mlp()
    compiled = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.warns(GradscopeWarning, match="compiled with torch.compile"):
        with gradscope.monitor(compiled, optimizer=opt) as mon:
            for i in range(3):
                x = torch.randn(16, 6)
                if i == 1:
                    x[0, 0] = float("nan")
                F.mse_loss(compiled(x), torch.randn(16, 3)).backward()
                opt.step()
                opt.zero_grad()
    [finding] = [f for f in mon.findings() if f.rule == "nonfinite-gradient"]
    assert "no module statistics were recorded" in finding.message
    assert "every backpropagated signal is finite" not in finding.message


def test_diagnose_runs_a_freshly_compiled_model_through_its_eager_module():
    """diagnose on torch.compile(model) that had never run raised a ModelError: dynamo traced into
    the structure probe's hooks. It now runs the wrapped module eagerly, with every statistic, under
    the layer names of the model the user wrote."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(8, 8)
    report = gradscope.diagnose(torch.compile(model, backend="aot_eager"), x, loss_fn=lambda out, inp: out.pow(2).mean())
    assert report.verdict.label == "trains"
    signal = report.history[report.history.metric == "out_grad_norm"].set_index("layer")["value"]
    # the backpropagated signal at the last layer: d(mean(y^2))/dy = 2y / numel, in float64
    y = copy.deepcopy(model).double()(x.double())
    assert signal["2"] == pytest.approx(float((2 * y / y.numel()).norm()), rel=1e-5)
    assert not any("_orig_mod" in str(name) for name in report.history.layer)


@pytest.mark.parametrize("how", ["model.compile()", "a compiled submodule"])
def test_diagnose_runs_modules_compiled_in_place_or_nested_eagerly_and_puts_them_back(how):
    """A model compiled in place (Hugging Face's torch_compile=True) got no finding at all, its
    hooks never running; a torch.compile'd submodule failed in dynamo. Both are diagnosed as the
    eager model is, and are handed back compiled."""
    def deep_sigmoid():
        torch.manual_seed(0)
        return nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(32, 32), nn.Sigmoid())])

    x = torch.randn(64, 32)
    expected = [f.rule for f in gradscope.diagnose(deep_sigmoid(), x, probe_steps=0).findings]
    assert "vanishing-gradient" in expected
    model = deep_sigmoid()
    if how == "model.compile()":
        model.compile(backend="eager")
        compiled_call = model._compiled_call_impl
    else:
        model[0] = torch.compile(model[0], backend="eager")
        wrapper = model[0]
    assert [f.rule for f in gradscope.diagnose(model, x, probe_steps=0).findings] == expected
    if how == "model.compile()":
        assert model._compiled_call_impl is compiled_call
    else:
        assert model[0] is wrapper
