"""gradscope.coordcheck: the numbers it records against a plain float64 reference, and its verdict
on two known pairs written here by hand from the µP paper (Yang et al. 2022, Tensor Programs V,
Table 3, with Table 8's readout multiplier for the GPT): a small GPT under Adam and an MLP under
SGD, each in the standard parametrisation (SP: flagged) and in µP (no finding)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gradscope
from gradscope.errors import UsageError, UsageTypeError
from gradscope.sweep import ACT_RMS, DELTA_RMS, SIGNAL_RMS, UPDATE_NORM, fit_slopes

WIDTHS = [64, 128, 256, 512]

# -- a small GPT, SP or µP -------------------------------------------------------------------------

VOCAB, T, BATCH, HEADS, LAYERS, BASE = 64, 32, 8, 4, 2, 64
ADAM_LR = 0.003


class Block(nn.Module):
    def __init__(self, n: int, mup: bool) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(n), nn.LayerNorm(n)
        self.c_attn, self.c_proj = nn.Linear(n, 3 * n), nn.Linear(n, n)
        self.fc, self.proj = nn.Linear(n, 4 * n), nn.Linear(4 * n, n)
        self.d, self.mup = n // HEADS, mup
        if mup:  # µP: zero query (Tensor Programs V, appendix on attention)
            nn.init.zeros_(self.c_attn.weight[:n])

    def forward(self, x):
        q, k, v = (t.unflatten(-1, (HEADS, self.d)).transpose(1, 2) for t in self.c_attn(self.ln1(x)).chunk(3, -1))
        # µP: attention logits scaled by 1/d_head; SP: 1/sqrt(d_head) (SDPA's default)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / self.d if self.mup else None)
        x = x + self.c_proj(y.transpose(1, 2).flatten(2))
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, n: int, mup: bool) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, n), nn.Embedding(T, n)
        self.blocks = nn.ModuleList(Block(n, mup) for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(n)
        self.lm_head = nn.Linear(n, VOCAB, bias=False)
        self.multiplier = BASE / n if mup else 1.0  # µP: readout multiplier 1/width, zero-initialised readout
        if mup:
            nn.init.zeros_(self.lm_head.weight)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x)) * self.multiplier


def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, T + 1), generator=torch.Generator().manual_seed(0))


def next_token_loss(logits):
    return F.cross_entropy(logits.flatten(0, 1), tokens()[:, 1:].flatten())


def gpt_adam(mup: bool):
    """µP under Adam: hidden matrices lr * BASE / n; embeddings, norms, biases and the multiplied
    readout lr; eps small next to µP's 1/width gradients."""
    def build(model: GPT) -> torch.optim.Optimizer:
        n = model.lm_head.in_features
        hidden = [p for name, p in model.named_parameters() if p.dim() == 2 and name.startswith("blocks")]
        rest = [p for name, p in model.named_parameters() if not (p.dim() == 2 and name.startswith("blocks"))]
        return torch.optim.Adam([{"params": hidden, "lr": ADAM_LR * (BASE / n if mup else 1.0)},
                                 {"params": rest, "lr": ADAM_LR}], eps=1e-12 if mup else 1e-8)
    return build


def gpt_check(mup: bool):
    return gradscope.coordcheck(lambda n: GPT(n, mup), WIDTHS, lambda n: tokens()[:, :-1], next_token_loss,
                                gpt_adam(mup), steps=5, seeds=3)


def test_gpt_in_sp_under_adam_is_flagged_for_its_logits_and_attention():
    start = time.perf_counter()
    report = gpt_check(mup=False)
    elapsed = time.perf_counter() - start
    rules = {f.rule for f in report.findings}
    assert {"readout-grows-with-width", "attention-logits-grow-with-width", "hidden-updates-scale-with-width"} <= rules
    assert "init-scales-with-width" not in rules and "input-updates-scale-with-width" not in rules
    sweep = report.sweep
    assert sweep.first("", DELTA_RMS).mean > 0.8  # readout logits ~ width^1 under SP + Adam
    assert all(sweep.final(layer, ACT_RMS).mean > 0.4 for layer in sweep.of_role("attention logits"))
    print(f"SP GPT, 4 widths x 3 seeds x 5 steps: {elapsed:.1f} s")
    assert elapsed < 120  # the target is under a minute on 2 CPU cores (docs/coordcheck.md has the number)


def test_gpt_in_mup_under_adam_has_no_finding():
    report = gpt_check(mup=True)
    assert report.findings == []
    sweep = report.sweep
    assert abs(sweep.final("", ACT_RMS).mean) < 0.25
    assert all(abs(sweep.first(layer, DELTA_RMS).mean) < 0.25 for layer in sweep.of_role("hidden"))


# -- an MLP under SGD, SP or µP (Table 3 without multipliers) --------------------------------------

IN, OUT, SGD_LR, SGD_BASE = 16, 4, 0.1, 64


class MLP(nn.Module):
    def __init__(self, n: int, mup: bool) -> None:
        super().__init__()
        self.input, self.hidden, self.readout = nn.Linear(IN, n), nn.Linear(n, n), nn.Linear(n, OUT)
        if mup:  # output weights: variance 1/fan_in² (SP: 1/fan_in, nn.Linear's default)
            nn.init.normal_(self.readout.weight, std=1 / n)

    def forward(self, x):
        return self.readout(torch.relu(self.hidden(torch.relu(self.input(x)))))


def mlp_sgd(mup: bool):
    """µP under SGD: learning rate ∝ fan_out for input weights and biases (the readout's bias has a
    fixed fan-out: constant), constant for hidden weights, ∝ 1/fan_in for output weights."""
    def build(model: MLP) -> torch.optim.Optimizer:
        n = model.hidden.in_features
        grow, shrink = (n / SGD_BASE, SGD_BASE / n) if mup else (1.0, 1.0)
        return torch.optim.SGD([
            {"params": [model.input.weight, model.input.bias, model.hidden.bias], "lr": SGD_LR * grow},
            {"params": [model.hidden.weight, model.readout.bias], "lr": SGD_LR},
            {"params": [model.readout.weight], "lr": SGD_LR * shrink}])
    return build


def mlp_inputs(width: int) -> torch.Tensor:
    return torch.randn(64, IN, generator=torch.Generator().manual_seed(0))


def test_mlp_under_sgd_sp_is_flagged_and_mup_is_not():
    sp = gradscope.coordcheck(lambda n: MLP(n, False), WIDTHS, mlp_inputs, optimizer=mlp_sgd(False))
    mup = gradscope.coordcheck(lambda n: MLP(n, True), WIDTHS, mlp_inputs, optimizer=mlp_sgd(True))
    assert {f.rule for f in sp.findings} == {"readout-grows-with-width", "input-updates-scale-with-width"}
    assert sp.sweep.first("input", DELTA_RMS).mean < -0.25  # the input layer learns ever more slowly
    assert mup.findings == []


# -- the numbers, against plain torch in float64 ---------------------------------------------------

def small(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 2))


X = torch.randn(16, 4, generator=torch.Generator().manual_seed(3))


def square_loss(output):
    return output.pow(2).mean()


def reference(width: int, seed: int) -> dict:
    """Layer "0" at step 0 and 1 under SGD lr 0.1, in float64 by hand: activation RMS, its change,
    the backpropagated signal's RMS, the update's norm."""
    torch.manual_seed(seed)
    model = small(width).double()
    x = X.double()
    h = model[0](x)
    loss = square_loss(model[2](model[1](h)))
    signal, grad_w, grad_b = torch.autograd.grad(loss, [h, model[0].weight, model[0].bias])
    with torch.no_grad():
        new_w, new_b = model[0].weight - 0.1 * grad_w, model[0].bias - 0.1 * grad_b
        after = x @ new_w.T + new_b
    rms = lambda t: t.pow(2).mean().sqrt().item()  # noqa: E731
    return {(0, ACT_RMS): rms(h), (1, ACT_RMS): rms(after), (0, DELTA_RMS): rms(after - h),
            (0, SIGNAL_RMS): rms(signal), (0, UPDATE_NORM): math.sqrt((0.1 * grad_w).pow(2).sum() + (0.1 * grad_b).pow(2).sum())}


def test_recorded_numbers_match_a_float64_reference():
    report = gradscope.coordcheck(small, [8, 32], X, square_loss, lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
                                  steps=1, seeds=[5])
    table = report.sweep.table
    for width in (8, 32):
        expected = reference(width, 5)
        rows = table[(table["width"] == width) & (table["layer"] == "0")]
        got = {(int(r.step), r.metric): r.value for r in rows.itertuples()}
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-5), key


def test_slopes_are_least_squares_per_seed_then_mean_and_spread():
    report = gradscope.coordcheck(small, [8, 16, 32, 64], X, square_loss, "sgd", lr=0.1, steps=1, seeds=3)
    table = report.sweep.table
    rows = table[(table["layer"] == "0") & (table["metric"] == ACT_RMS) & (table["step"] == 1)]
    per_seed = [np.polyfit(np.log(g["width"].to_numpy(float)), np.log(g["value"].to_numpy(float)), 1)[0]
                for _, g in rows.sort_values("width").groupby("seed")]
    slope = report.sweep.slope("0", ACT_RMS, 1)
    assert slope.mean == pytest.approx(np.mean(per_seed), abs=1e-9)
    assert slope.spread == pytest.approx(np.std(per_seed), abs=1e-9)
    assert slope.seeds == 3


def test_fit_slopes_on_exact_powers_and_zeros():
    widths = np.array([64, 128, 256])
    values = np.array([[w ** 1.0 for w in widths], [3 * w ** -0.5 for w in widths], [0.0, 1.0, 2.0]])
    slopes = fit_slopes(widths, values)
    assert slopes[0] == pytest.approx(1.0) and slopes[1] == pytest.approx(-0.5) and math.isnan(slopes[2])


def test_attention_logits_are_measured_as_the_softmax_sees_them():
    class Attend(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.qkv = nn.Linear(8, 3 * width)

        def forward(self, x):
            q, k, v = (t.unsqueeze(1) for t in self.qkv(x).chunk(3, -1))
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3).squeeze(1)

    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1))
    report = gradscope.coordcheck(Attend, [4, 8], x, lambda out: out.pow(2).mean(), "sgd", steps=1, seeds=[0])
    torch.manual_seed(0)
    model = Attend(4).double()
    q, k, _ = model.qkv(x.double()).chunk(3, -1)
    logits = (q @ k.transpose(-2, -1)) * 0.3
    causal = logits[:, torch.ones(5, 5, dtype=torch.bool).tril()]
    table = report.sweep.table
    [got] = table[(table.width == 4) & (table.step == 0) & (table.metric == ACT_RMS)
                  & (table.layer == "attention_logits#0")]["value"]
    assert got == pytest.approx(causal.pow(2).mean().sqrt().item(), rel=1e-5)
    assert report.sweep.roles["attention_logits#0"] == "attention logits"


@pytest.mark.parametrize("kwargs, error, match", [
    ({"widths": [64]}, UsageError, r"at least 2 different widths but got \[64\]"),
    ({"widths": "64,128"}, UsageTypeError, "Expected `widths` to be a list of ints"),
    ({"widths": [64, -1]}, UsageError, r"positive ints but got \[64, -1\]"),
    ({"seeds": 0}, UsageError, "Expected `seeds` to be a positive count"),
    ({"steps": 0}, UsageError, "Expected `steps` to be a positive int but got 0"),
    ({"optimizer": "lion"}, UsageError, "Expected `optimizer` to be one of sgd, adam, adamw"),
    ({"optimizer": lambda m: None}, UsageTypeError, "optimizer\\(model\\) returned NoneType at width 8"),
    ({"optimizer": lambda m: torch.optim.SGD(m.parameters(), lr=0.1), "lr": 0.1}, UsageError, "`lr` \\(0.1\\) applies"),
    ({"build_model": lambda width: "model"}, UsageTypeError, "build_model\\(8\\) returned str"),
    ({"build_model": lambda width: nn.Linear(4, width) if width == 8 else nn.Sequential(nn.Linear(4, width))},
     UsageError, "do not have the same layers"),
])
def test_bad_arguments_say_what_was_given_and_expected(kwargs, error, match):
    arguments = {"build_model": small, "widths": [8, 16], "inputs": X, "loss_fn": square_loss, "steps": 1, "seeds": 1}
    with pytest.raises(error, match=match):
        gradscope.coordcheck(**{**arguments, **kwargs})


def test_a_model_that_fails_at_one_width_is_named_with_the_width():
    def build(width):
        return nn.Sequential(nn.Linear(4 if width == 8 else 5, width))

    with pytest.raises(gradscope.ModelError, match=r"At width 16, the model raised in forward at module '0'"):
        gradscope.coordcheck(build, [8, 16], X, square_loss, steps=1, seeds=1)


def test_global_random_state_is_restored():
    before = torch.random.get_rng_state()
    gradscope.coordcheck(small, [8, 16], X, square_loss, steps=1, seeds=1)
    assert torch.equal(torch.random.get_rng_state(), before)
