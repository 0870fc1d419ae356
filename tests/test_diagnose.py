"""gradscope.diagnose on models it must pass and models it must flag, its inputs and losses, and
that it leaves the model as it found it."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gradscope
from gradscope.fixes import insert_pseudo_norm
from gradscope.rules.base import ERROR, WARNING
from tests.reference import reference
from gradscope.rules.example_models import stack, x64
from tests.zoo import BROKEN, HEALTHY

SIGNAL_RULES = {"vanishing-gradient", "exploding-gradient", "nonfinite-gradient", "dead-units",
                "saturated-activations"}


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("name", sorted(HEALTHY))
def test_healthy_models_raise_no_alarm(name, steps):
    torch.manual_seed(0)
    model, inputs = HEALTHY[name]()
    report = gradscope.diagnose(model, inputs, steps=steps)
    alarms = [(f.rule, f.message) for f in report.findings
              if f.rule in SIGNAL_RULES or f.severity in (ERROR, WARNING)]
    assert alarms == []


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_models_yield_their_findings(name):
    torch.manual_seed(0)
    factory, expected = BROKEN[name]
    model, inputs = factory()
    report = gradscope.diagnose(model, inputs)
    rules = {f.rule for f in report.findings}
    assert expected <= rules, rules
    assert not (rules & SIGNAL_RULES) - expected, rules  # no second signal problem invented


def test_nan_is_named_where_it_is_born_not_where_it_spreads():
    torch.manual_seed(0)
    model, inputs = BROKEN["nan-born-in-backward"][0]()
    finding = next(f for f in gradscope.diagnose(model, inputs).findings if f.rule == "nonfinite-gradient")
    assert finding.layers == ["2"]  # the Sqrt module; "1" (ReLU) and "0" only receive it
    assert finding.evidence["phase"] == "backward"
    assert finding.evidence["first_nonfinite_signal_at"] == "1"

    model, inputs = BROKEN["nan-born-in-forward"][0]()
    finding = next(f for f in gradscope.diagnose(model, inputs).findings if f.rule == "nonfinite-gradient")
    assert finding.layers == ["1"] and finding.evidence["phase"] == "forward"


def test_a_nan_in_the_batch_points_at_the_data_and_kills_no_unit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 2))
    x = torch.randn(256, 3)
    x[0, 0] = float("nan")  # one bad sample of 256
    report = gradscope.diagnose(model, x, probe_steps=0)
    finding = next(f for f in report.findings if f.rule == "nonfinite-gradient")
    assert finding.layers == ["0"] and finding.evidence["phase"] == "input"
    assert "the batch itself may hold NaN/Inf" in finding.message and "torch.isfinite(inputs)" in finding.fix
    assert "dead-units" not in {f.rule for f in report.findings}  # every unit was dead before


def test_pseudo_norm_removes_the_vanishing_finding():
    torch.manual_seed(0)
    model = stack(20, nn.Tanh)
    assert "vanishing-gradient" in {f.rule for f in gradscope.diagnose(model, x64()).findings}
    insert_pseudo_norm(model, every=2)
    assert "vanishing-gradient" not in {f.rule for f in gradscope.diagnose(model, x64()).findings}


def test_vanishing_evidence_matches_a_float64_reference():
    torch.manual_seed(0)
    model = stack(12, nn.Sigmoid)
    x = x64()
    target = torch.randn(64, 10, generator=torch.Generator().manual_seed(1))

    def loss_fn(out, inputs):
        return 0.5 * (out - target).pow(2).sum() / 64

    finding = next(f for f in gradscope.diagnose(model, x, loss_fn=loss_fn).findings
                   if f.rule == "vanishing-gradient")
    expected = reference(model, [(x, target)], lambda out, t: 0.5 * (out - t).pow(2).sum() / 64)
    logs = np.log10([expected[(str(i), "out_grad_norm")] for i in range(25)])
    quarter = 25 // 4
    assert finding.evidence["signal_input_side"] == pytest.approx(10 ** np.median(logs[:quarter]), rel=1e-4)
    assert finding.evidence["signal_output_side"] == pytest.approx(10 ** np.median(logs[-quarter:]), rel=1e-4)
    drop = np.median(logs[-quarter:]) - np.median(logs[:quarter])
    assert finding.evidence["quarter_orders"] == pytest.approx(drop * 24 / (25 - quarter), rel=1e-4)
    assert drop > 3


def test_model_mode_parameters_buffers_grads_optimizer_and_rng_are_restored():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    model.eval()
    model[1].train()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(16, 4)).sum().backward()
    opt.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    opt_state = json.dumps({k: v["exp_avg"].tolist() for k, v in enumerate(opt.state.values())})
    x = torch.randn(16, 4)
    rng = torch.get_rng_state()
    report = gradscope.diagnose(model, x, steps=3, optimizer=opt)
    assert report.options["optimizer"] == "Adam"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert json.dumps({k: v["exp_avg"].tolist() for k, v in enumerate(opt.state.values())}) == opt_state
    assert [m.training for m in model.modules()] == [False, False, True, False, False]
    assert torch.equal(torch.get_rng_state(), rng)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_a_diagnosed_model_equals_its_untouched_deep_copy_and_gives_the_same_report():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1))
    model[1].eval()  # a frozen BatchNorm must stay frozen
    twin = copy.deepcopy(model)
    x = torch.randn(32, 4)
    params = [id(p) for p in model.parameters()]
    rng = torch.get_rng_state()
    first = gradscope.diagnose(model, x, steps=3, optimizer=torch.optim.Adam(model.parameters(), lr=0.1)).to_json()
    assert torch.equal(torch.get_rng_state(), rng)
    assert [id(p) for p in model.parameters()] == params  # restored in place, not replaced
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        assert torch.equal(p, q) and p.grad is None and p.requires_grad == q.requires_grad, name
    for (name, b), (_, c) in zip(model.named_buffers(), twin.named_buffers(), strict=True):
        assert torch.equal(b, c), name
    assert [m.training for m in model.modules()] == [m.training for m in twin.modules()]
    # the report depends on the weights and the inputs only: the copy, and the model again, agree
    again = gradscope.diagnose(twin, x, steps=3, optimizer=torch.optim.Adam(twin.parameters(), lr=0.1)).to_json()
    assert again == first
    assert gradscope.diagnose(model, x, steps=3, optimizer=torch.optim.Adam(model.parameters(), lr=0.1)).to_json() == first


class KeywordModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(2, 3)

    def forward(self, x, y):
        return {"logits": self.a(x) + self.b(y), "extra": (self.a(x),)}


def test_inputs_tuple_and_dict_and_losses():
    model = KeywordModel()
    x, y = torch.randn(5, 4), torch.randn(5, 2)
    assert gradscope.diagnose(model, (x, y)).options["loss"] == "default"
    assert gradscope.diagnose(model, {"x": x, "y": y}).options["loss"] == "default"
    report = gradscope.diagnose(model, (x, y), loss_fn=lambda out: out["logits"].pow(2).mean())
    assert report.options["loss"] == "loss_fn"
    seen = []
    gradscope.diagnose(model, (x, y), loss_fn=lambda out, inputs: seen.append(inputs) or out["logits"].sum())
    assert seen[0][0] is x


def test_model_output_loss_is_used():
    model, inputs = HEALTHY["hf-gpt2-lm"]()
    assert gradscope.diagnose(model, inputs).options["loss"] == "output.loss"


def test_report_json_has_the_documented_shape():
    report = gradscope.diagnose(stack(12, nn.Sigmoid), x64())
    data = json.loads(report.to_json())
    assert data["version"] == 1
    assert data["model"]["class"] == "Sequential" and data["model"]["batch_size"] == 64
    assert set(data["findings"][0]) == {"code", "rule", "severity", "layers", "message", "fix", "evidence"}
    layer0 = data["layers"][0]
    assert layer0["layer"] == "0" and layer0["type"] == "Linear"
    assert layer0["grad_norm"] == pytest.approx(report.history.query(
        "step == 0 and metric == 'grad_norm' and layer.str.startswith('0.')").value.pow(2).sum() ** 0.5)


def test_model_error_names_the_module_and_the_inputs():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(5, 1))
    with pytest.raises(gradscope.ModelError, match=r"at module '2' \(Linear\).*tensor of shape \(3, 4\)"):
        gradscope.diagnose(model, torch.randn(3, 4))


def test_a_batchnorm_kept_in_eval_mode_given_one_sample_is_told_why():
    """diagnose trains the model, BatchNorm on the batch's own statistics: one sample is not enough,
    and the message says so rather than that the inputs do not fit."""
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    model[1].eval()
    with pytest.raises(gradscope.ModelError, match=r"training mode.*pass a batch of 2 or more samples"):
        gradscope.diagnose(model, torch.randn(1, 4))


@pytest.mark.parametrize("kwargs, match", [
    ({"inputs": "x"}, "Expected `inputs` to be a tensor, a tuple"),
    ({"steps": 0}, "Expected `steps` to be a positive int"),
    ({"loss_fn": 3}, "Expected `loss_fn` to be callable"),
    ({"loss_fn": lambda out: out}, "floating-point scalar tensor"),
    ({"inputs": torch.randn(0, 4)}, r"inputs are empty \(tensor of shape \(0, 4\)"),
    ({"model": nn.Linear(4, 2).requires_grad_(False)}, "all 2 of its parameters are frozen"),
    ({"model": nn.Linear(4, 2).to("meta")}, "on the meta device .* model.to_empty"),
    ({"model": "scripted"}, "TorchScript module .* Pass the nn.Module"),
    ({"optimizer": "lbfgs"}, r"Got LBFGS, whose step\(\) needs a closure .* gradscope.monitor"),
    ({"seed": "a"}, r"Expected `seed` to be an int but got 'a'"),
])
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_usage_errors(kwargs, match):
    args = {"model": nn.Linear(4, 2), "inputs": torch.randn(3, 4), **kwargs}
    if args["model"] == "scripted":
        args["model"] = torch.jit.script(nn.Linear(4, 2))
    if args.get("optimizer") == "lbfgs":
        args["optimizer"] = torch.optim.LBFGS(args["model"].parameters())
    with pytest.raises(gradscope.UsageError, match=match):
        gradscope.diagnose(**args)


@pytest.mark.parametrize("loss_fn", [nn.CrossEntropyLoss(), F.cross_entropy], ids=["module", "function"])
def test_a_loss_that_needs_targets_is_told_its_second_argument_is_the_inputs(loss_fn):
    """A torch loss passed as it is gets the inputs as its targets; the message says so and
    shows how to close over the targets."""
    with pytest.raises(gradscope.ModelError, match=r"loss_fn raised: RuntimeError: .* its second argument is the "
                       r"inputs given to diagnose, not targets.*lambda output, inputs: criterion\(output, targets\)"):
        gradscope.diagnose(nn.Linear(4, 3), torch.randn(5, 4), loss_fn=loss_fn)


def test_monitor_findings_over_a_training_loop():
    torch.manual_seed(0)
    model = stack(12, nn.Sigmoid)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.monitor(model, every=2, optimizer=opt) as mon:
        for _ in range(6):
            nn.functional.cross_entropy(model(x64()), torch.arange(64) % 10).backward()
            opt.step()
            opt.zero_grad()
        live = mon.findings()
    # the input-side layers' weights barely move: stalled-updates names them too
    assert [f.rule for f in live] == ["vanishing-gradient", "stalled-updates"]
    assert live[0].evidence["steps"] == [0, 2, 4]
    assert "0.weight" in live[1].layers and "24.weight" not in live[1].layers
    assert [f.rule for f in mon.findings()] == [f.rule for f in live]


def test_gradients_already_on_the_model_do_not_leak_into_the_run():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.randn(16, 4)
    clean = gradscope.diagnose(model, x).history
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)
    stale = gradscope.diagnose(model, x).history
    assert stale.value.to_numpy() == pytest.approx(clean.value.to_numpy())
    assert all((p.grad == 100).all() for p in model.parameters())  # and they are put back


def test_default_loss_gradient_has_a_cross_entropys_size_at_each_position():
    """0.5 ||y - r||² / (P sqrt(K)): at y = 0 the gradient at each position is -r / (P sqrt(K)), of
    norm about 1 / P, whatever the size K of the last dimension (compare: float64 by hand)."""
    batch, length, features = 3, 5, 49
    model = nn.Sequential(nn.Linear(4, features))
    nn.init.zeros_(model[0].weight), nn.init.zeros_(model[0].bias)
    report = gradscope.diagnose(model, torch.randn(batch, length, 4), probe_steps=0)
    target = torch.randn((batch, length, features), generator=torch.Generator().manual_seed(1)).double()
    positions = batch * length
    expected = (-target.sum(dim=(0, 1)) / (positions * features ** 0.5)).norm().item()
    got = report.history.query("step == 0 and metric == 'grad_norm' and layer == '0.bias'").value.item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert report.options["loss"] == "default"


class LogitsAndLoss(nn.Module):
    """nanoGPT's and minGPT's convention: forward(idx, targets) returns (logits, loss)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.head = nn.Linear(8, 16)

    def forward(self, idx, targets=None):
        logits = self.head(self.embed(idx))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, 16), targets.view(-1))
        return logits, loss


def test_the_scalar_in_a_tuple_output_is_the_models_loss():
    torch.manual_seed(0)
    model = LogitsAndLoss()
    idx = torch.randint(0, 16, (4, 6), generator=torch.Generator().manual_seed(0))
    targets = torch.roll(idx, -1, dims=1)
    report = gradscope.diagnose(model, (idx, targets), optimizer=torch.optim.AdamW(model.parameters(), lr=3e-4))
    assert report.options["loss"] == "output[1]"
    with torch.no_grad():  # the probe's first loss is the model's cross-entropy at init, in float64
        logits = model.head.weight.double() @ model.embed.weight.double()[idx].unsqueeze(-1)
        logits = logits.squeeze(-1) + model.head.bias.double()
        expected = F.cross_entropy(logits.view(-1, 16), targets.view(-1)).item()
    assert report.dynamics.losses[0] == pytest.approx(expected, rel=1e-5)
    assert gradscope.diagnose(model, idx, probe_steps=0).options["loss"] == "default"  # (logits, None)


def test_the_monitored_steps_clip_the_gradient_as_the_recipe_says():
    """With clip_grad_norm, every step diagnose trains is clipped, not only the probe's: the
    recorded gradient norms, over all parameters, are at most the threshold."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    report = gradscope.diagnose(model, torch.randn(16, 8) * 50, optimizer=opt, steps=4, clip_grad_norm=0.25,
                                probe_steps=0)
    grads = report.history[report.history["metric"] == "grad_norm"]
    totals = grads.groupby("step")["value"].apply(lambda v: float((v ** 2).sum() ** 0.5))
    assert len(totals) == 4 and (totals <= 0.25 * (1 + 1e-5)).all(), totals


def _bn_mlp(std: float, norm: bool = True) -> nn.Module:
    """64-256-256-10 ReLU MLP, each hidden Linear followed by a BatchNorm, hidden weights N(0, std^2)."""
    torch.manual_seed(0)
    layers = []
    for fan_in in (64, 256):
        linear = nn.Linear(fan_in, 256)
        nn.init.normal_(linear.weight, std=std)
        layers += [linear, nn.BatchNorm1d(256) if norm else nn.Identity(), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(256, 10))


def test_large_weights_under_batchnorm_learn_through_the_others_and_are_information():
    """Hidden weights N(0, 100) under BatchNorm are scale-invariant: SGD moves them by about 1e-6
    of their size, but the head moves within the band, and the model trains (0.93-0.96 on digits
    in 600 steps). updates-off-band says so as information; the verdict trains. The same model at
    lr 1e-7, whose head barely moves either, keeps the error, and so does a BatchNorm MLP of
    ordinary weights at lr 3e-5, whose head moves faster than its hidden layers (2.5e-5 of the
    weights per probe step, 5.6e-5 once the momentum has built up)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g)
    for std, lr, severity, label in ((10.0, 0.05, "info", "trains"), (10.0, 1e-7, "error", "fails"),
                                     (0.05, 3e-5, "error", "fails")):  # small weights: no excuse
        model = _bn_mlp(std)
        report = gradscope.diagnose(model, x, lambda out: F.cross_entropy(out, y),
                                    optimizer=torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9))
        [finding] = [f for f in report.findings if f.rule == "updates-off-band"]
        assert (finding.severity, report.verdict.label) == (severity, label)
        assert ("feed a normalisation layer" in finding.message) == (severity == "info")


def test_a_class_name_with_norm_in_it_is_no_normalisation_layer():
    """A root class named NormalNet, an identity named NoNorm and gradscope's PseudoNorm (which
    rescales the backward gradient only) normalise no forward signal: a plain MLP stays plain."""
    from gradscope.fixes import PseudoNorm
    from gradscope.structure import StructureProbe

    class NormalNet(nn.Sequential):
        pass

    class NoNorm(nn.Identity):
        pass

    model = NormalNet(nn.Linear(4, 8), NoNorm(), nn.ReLU(), PseudoNorm(), nn.Linear(8, 2))
    with StructureProbe(model) as probe:
        loss = model(torch.randn(3, 4)).sum()
    structure = probe.structure(loss, 3)
    assert structure.norm_layers == [] and not structure.normalized
    with StructureProbe(_bn_mlp(1.0)) as probe:
        loss = probe.model(torch.randn(3, 64)).sum()
    assert probe.structure(loss, 3).norm_layers == ["1", "4"]


def test_parameters_the_loss_does_not_reach_are_information_and_an_unlearning_layer_a_warning():
    """An unused second head gets no gradient by design (as Hugging Face models' poolers and mask
    tokens do): stalled-updates names it, as information. A layer whose optimizer group has lr 0
    is in the graph and does not move: a warning."""
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(nn.Linear(16, 32), nn.Tanh())
            self.head, self.unused = nn.Linear(32, 1), nn.Linear(32, 4)

        def forward(self, x):
            return self.head(self.trunk(x))

    torch.manual_seed(0)
    model = TwoHeads()
    x = torch.randn(64, 16)
    report = gradscope.diagnose(model, x, lambda out: out.pow(2).mean(), steps=3,
                                optimizer=torch.optim.SGD(model.parameters(), lr=0.05))
    [finding] = [f for f in report.findings if f.rule == "stalled-updates"]
    assert finding.severity == "info" and finding.layers == ["unused.weight", "unused.bias"]
    assert "no gradient reached it" in finding.message and report.verdict.label == "trains"
    pair = gradscope.rules.find_rule("stalled-updates").pair(bad=True)
    [finding] = [f for f in gradscope.diagnose(**pair).findings if f.rule == "stalled-updates"]
    assert finding.severity == "warning" and "update ratio" in finding.message


def test_a_model_that_changes_its_input_in_place_is_diagnosed_on_the_input_as_given():
    """``x.mul_(2); x.add_(1)`` in the forward doubled the shared input at each of the probe's
    steps: the loss blew up and the verdict was `fails` for a model that trains. Each forward now
    gets a copy, and the caller's tensor is left as it was."""

    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(8, 2)

        def forward(self, x):
            x.mul_(2)
            x.add_(1)
            return self.linear(x)

    torch.manual_seed(0)
    x = torch.randn(16, 8)
    given = x.clone()
    model = InPlace()
    report = gradscope.diagnose(model, x, optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    assert torch.equal(x, given)
    assert report.verdict.label == "trains", report.verdict.message


def test_a_model_drawing_from_numpy_and_random_gets_the_same_report_each_run():
    """A stochastic depth drawn with np.random / random in the forward: seed only seeded torch,
    so the report depended on the state the caller's generators were in (and `gradscope check`,
    a new process each time, failed one run in two). They are left as they were."""
    import random

    class Stochastic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            if np.random.rand() < 0.5:
                h = h + torch.relu(self.b(h))
            return self.c(h) * (1 + random.random())

    torch.manual_seed(0)
    model, x = Stochastic(), torch.randn(16, 8)
    np.random.seed(123)
    random.seed(123)
    numpy_next, python_next = np.random.rand(), random.random()
    reports = []
    for state in (123, 7, 99):  # the caller's generators anywhere: the report depends on seed alone
        np.random.seed(state)
        random.seed(state)
        reports.append(gradscope.diagnose(model, x, steps=2).to_json())
    assert all(r == reports[0] for r in reports)
    np.random.seed(123)
    random.seed(123)
    gradscope.diagnose(model, x, steps=2)
    assert (np.random.rand(), random.random()) == (numpy_next, python_next)


def test_a_loss_that_differentiates_with_respect_to_the_inputs_gets_them():
    """A PINN's loss (the output's derivative with respect to the input) needs the very input
    tensor the model ran on: inputs that require grad are not copied."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))
    x = torch.linspace(0, 1, 32).reshape(-1, 1).requires_grad_()

    def residual(u, x):
        du = torch.autograd.grad(u.sum(), x, create_graph=True)[0]
        return (du - torch.cos(x)).pow(2).mean()

    report = gradscope.diagnose(model, x, loss_fn=residual, steps=2)
    assert report.options["loss"] != "default"
