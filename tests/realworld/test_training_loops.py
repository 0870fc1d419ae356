"""Training loops as third-party code writes them, in small re-implementations: nanoGPT (a disabled
GradScaler), pytorch/examples' time-sequence prediction (LBFGS and its closure), minGPT's Trainer
(the optimizer built inside ``run()``), DCGAN (two models trained in turn), and a run killed before
its first full history part. Each healthy loop yields no warning or error finding and statistics
equal to a float64 autograd reference; broken variants yield the expected finding."""

from __future__ import annotations

import copy
import textwrap
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gradscope
from gradscope.rundir import read_history, read_meta
from tests.killing import kill_after
from tests.reference import reference


def by_step(mon, metric: str) -> dict[int, dict[str, float]]:
    df = mon.to_dataframe()
    df = df[df.metric == metric]
    return {int(s): dict(zip(g.layer, g.value)) for s, g in df.groupby("step")}


def step_values(mon, step: int) -> dict[tuple[str, str], float]:
    df = mon.to_dataframe()
    rows = df[df.step == step]
    return {(r.layer, r.metric): r.value for r in rows.itertuples()}


def assert_matches(got: dict, expected: dict, metrics=None, rel=2e-4) -> None:
    """Every expected (layer, metric) of ``metrics`` recorded and equal to float32 round-off
    (relative 2e-4, or 1e-5 of the metric's largest value for values near zero)."""
    keys = [k for k in expected if metrics is None or k[1] in metrics]
    assert keys
    scale: dict[str, float] = {}
    for (_, metric) in keys:
        scale[metric] = max(scale.get(metric, 0.0), abs(expected[(_, metric)]))
    missing = [k for k in keys if k not in got]
    assert not missing, missing
    for key in keys:
        assert got[key] == pytest.approx(expected[key], rel=rel, abs=1e-5 * scale[key[1]] + 1e-12), key


def assert_healthy(mon) -> None:
    serious = [f"{f.rule}: {f.message}" for f in mon.findings() if f.severity in ("warning", "error")]
    assert not serious, serious


def grad_norm_reference(model: nn.Module, loss_of) -> dict[str, float]:
    """Per-parameter gradient norms of ``loss_of(float64 copy of model)``, by plain autograd."""
    ref = copy.deepcopy(model).double()
    params = dict(ref.named_parameters())
    grads = torch.autograd.grad(loss_of(ref), list(params.values()))
    return {name: float(g.norm()) for name, g in zip(params, grads)}


# -- nanoGPT: torch.cuda.amp.GradScaler(enabled=(dtype == "float16")), disabled on bf16 and CPU ---

class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int = 16, block_size: int = 8, n_embd: int = 16, n_head: int = 2,
                 n_layer: int = 2) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying, as nanoGPT does

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def lm_loss(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def make_scaler(kind: str):
    if kind == "torch.cuda.amp":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated, still what nanoGPT calls
            return torch.cuda.amp.GradScaler(enabled=False)
    return torch.amp.GradScaler(enabled=False)


@pytest.mark.parametrize("scaler_kind", ["torch.amp", "torch.cuda.amp"])
def test_nanogpt_loop_with_a_disabled_grad_scaler(scaler_kind):
    torch.manual_seed(0)
    model = GPT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    scaler = make_scaler(scaler_kind)
    accumulation, grad_clip = 2, 1.0
    data = torch.randint(0, 16, (400,), generator=torch.Generator().manual_seed(1))

    def get_batch(generator):
        ix = torch.randint(len(data) - 9, (8,), generator=generator)
        return torch.stack([data[i:i + 8] for i in ix]), torch.stack([data[i + 1:i + 9] for i in ix])

    generator = torch.Generator().manual_seed(2)
    expected = {}
    with gradscope.monitor(model, optimizer=optimizer, scaler=scaler, weights_every=1) as mon:
        assert mon.scaler is None  # scale 1: nothing to unscale, no step is ever skipped
        for step in range(4):
            batches = [get_batch(generator) for _ in range(accumulation)]
            expected[step] = reference(model, batches, lambda out, y: lm_loss(out, y) / accumulation)
            for x, y in batches:
                loss = lm_loss(model(x), y) / accumulation
                scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            total = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            clip = min(1.0, grad_clip / (float(total) + 1e-6))  # the optimizer sees clipped gradients
            for key in [k for k in expected[step] if k[1] == "grad_norm"]:
                expected[step][key] *= clip
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
    assert sorted(by_step(mon, "grad_norm")) == [0, 1, 2, 3]
    for step, exp in expected.items():
        assert_matches(step_values(mon, step), exp,
                       ("grad_norm", "weight_norm", "act_rms", "out_grad_norm", "grad_nonfinite"))
    assert "amp_skipped" not in set(mon.to_dataframe().metric)
    assert "step" not in vars(scaler)  # a disabled scaler is left as it was
    assert_healthy(mon)


# -- pytorch/examples time_sequence_prediction: LSTMCells trained with LBFGS ------------------

class Sequence(nn.Module):
    def __init__(self, hidden: int = 12) -> None:
        super().__init__()
        self.hidden = hidden
        self.lstm1 = nn.LSTMCell(1, hidden)
        self.lstm2 = nn.LSTMCell(hidden, hidden)
        self.linear = nn.Linear(hidden, 1)

    def forward(self, x):
        h1 = c1 = x.new_zeros(x.size(0), self.hidden)
        h2 = c2 = x.new_zeros(x.size(0), self.hidden)
        outputs = []
        for input_t in x.split(1, dim=1):
            h1, c1 = self.lstm1(input_t, (h1, c1))
            h2, c2 = self.lstm2(h1, (h2, c2))
            outputs.append(self.linear(h2))
        return torch.cat(outputs, dim=1)


def sine_waves(n: int = 8, length: int = 24) -> torch.Tensor:
    shift = torch.randint(-20, 20, (n, 1), generator=torch.Generator().manual_seed(3))
    return torch.sin((torch.arange(length) + shift) / 4.0)


@pytest.mark.parametrize("line_search", [None, "strong_wolfe"])
def test_lbfgs_records_the_first_evaluation_of_each_step(line_search):
    torch.manual_seed(0)
    model = Sequence()
    waves = sine_waves()
    x, y = waves[:, :-1], waves[:, 1:]
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.8, max_iter=6, line_search_fn=line_search)
    expected, evaluations, ratios = {}, [], {}
    with gradscope.monitor(model, optimizer=optimizer, weights_every=1) as mon:
        for step in range(3):
            expected[step] = reference(model, [(x, y)], F.mse_loss)
            before = [p.detach().double().clone() for p in model.parameters()]
            evaluations.append(0)

            def closure():
                evaluations[-1] += 1
                optimizer.zero_grad()
                loss = F.mse_loss(model(x), y)
                loss.backward()
                return loss

            optimizer.step(closure)
            ratios[step] = {
                name: float((p.detach().double() - w).norm() / w.norm())
                for (name, p), w in zip(model.named_parameters(), before)
            }
    assert min(evaluations) > 1  # several forward/backward passes per step
    assert sorted(by_step(mon, "grad_norm")) == [0, 1, 2]
    for step in range(3):
        # the gradient, weights and module statistics at the weights the step started from,
        # not the sum over LBFGS's evaluations nor the previous step's last evaluation
        assert_matches(step_values(mon, step), expected[step])
        assert by_step(mon, "update_ratio")[step] == pytest.approx(ratios[step], rel=1e-4)
    assert_healthy(mon)


# -- minGPT: the Trainer builds its optimizer inside run() and calls back after each step -------

class MinGPTTrainer:
    """minGPT's Trainer loop: configure_optimizers() inside run(), zero_grad before backward,
    clipping, and ``on_batch_end`` callbacks after optimizer.step()."""

    def __init__(self, model: nn.Module, batches: list, max_iters: int) -> None:
        self.model, self.batches, self.max_iters = model, batches, max_iters
        self.optimizer = None
        self.callbacks: dict[str, list] = {"on_batch_end": []}
        self.iter_num = 0

    def add_callback(self, event: str, fn) -> None:
        self.callbacks[event].append(fn)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        decay = [p for n, p in self.model.named_parameters() if n.endswith("weight") and p.dim() >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if not (n.endswith("weight") and p.dim() >= 2)]
        return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=3e-3, betas=(0.9, 0.95))

    def run(self) -> None:
        self.optimizer = self.configure_optimizers()
        self.model.train()
        for self.iter_num in range(self.max_iters):
            x, y = self.batches[self.iter_num]
            loss = lm_loss(self.model(x), y)
            self.model.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1e3)  # in place; does not bind here
            self.optimizer.step()
            for fn in self.callbacks["on_batch_end"]:
                fn(self)


def test_mingpt_trainer_attaches_its_optimizer_from_a_callback():
    torch.manual_seed(0)
    model = GPT(n_layer=1)
    generator = torch.Generator().manual_seed(4)
    tokens = [torch.randint(0, 16, (8, 9), generator=generator) for _ in range(4)]
    batches = [(t[:, :-1], t[:, 1:]) for t in tokens]
    trainer = MinGPTTrainer(model, batches, max_iters=4)

    def weights_now() -> dict[str, torch.Tensor]:
        return {n: p.detach().double().clone() for n, p in model.named_parameters()}

    def grads_at(step: int) -> dict[str, float]:
        """float64 gradient norms of step ``step``'s batch at the model's weights now."""
        x, y = batches[step]
        return grad_norm_reference(model, lambda ref: lm_loss(ref(x), y))

    weights, expected_grads = [weights_now()], [grads_at(0)]

    def on_batch_end(trainer):
        mon.attach_optimizer(trainer.optimizer)  # called every batch: the first call counts
        weights.append(weights_now())
        if trainer.iter_num + 1 < len(batches):
            expected_grads.append(grads_at(trainer.iter_num + 1))

    trainer.add_callback("on_batch_end", on_batch_end)
    with gradscope.monitor(model, weights_every=1) as mon:
        assert mon.optimizer is None
        trainer.run()
    assert mon.optimizer is trainer.optimizer
    grad_norms, update_ratios = by_step(mon, "grad_norm"), by_step(mon, "update_ratio")
    assert sorted(grad_norms) == [0, 1, 2, 3]  # step 0 ended at the first attach, in its place
    for step in range(4):
        assert grad_norms[step] == pytest.approx(expected_grads[step], rel=2e-4, abs=1e-7)
    # the update of step 0 was made before the monitor saw the optimizer; from step 1 on it is there
    assert sorted(update_ratios) == [1, 2, 3]
    for step in (1, 2, 3):
        before, after = weights[step], weights[step + 1]
        expected = {n: float((after[n] - before[n]).norm() / before[n].norm()) for n in before}
        assert update_ratios[step] == pytest.approx(expected, rel=1e-4)
    assert_healthy(mon)


# -- DCGAN: a discriminator and a generator, each with its own optimizer ---------------------

class Generator(nn.Module):
    def __init__(self, nz: int = 8) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, 16, 4, 1, 0, bias=False), nn.BatchNorm2d(16), nn.ReLU(True),
            nn.ConvTranspose2d(16, 1, 4, 2, 1, bias=False), nn.Tanh(),
        )

    def forward(self, z):
        return self.main(z)


class Discriminator(nn.Module):
    def __init__(self, dead: bool = False) -> None:
        """``dead``: the broken variant, a ReLU whose every unit is dead (a first convolution
        with a bias of -50, far below what 16 weights times pixels in [-1, 1] can reach)."""
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(1, 16, 4, 2, 1, bias=dead), nn.ReLU() if dead else nn.LeakyReLU(0.2),
            nn.Conv2d(16, 32, 4, 1, 0, bias=False), nn.Flatten(), nn.Linear(32, 1), nn.Sigmoid(),
        )
        if dead:
            nn.init.constant_(self.main[0].bias, -50.0)

    def forward(self, x):
        return self.main(x).view(-1)


def blobs(n: int, generator: torch.Generator) -> torch.Tensor:
    """8x8 images of a bright square at a random place, in [-1, 1] as the generator's Tanh."""
    images = -torch.ones(n, 1, 8, 8)
    corners = torch.randint(0, 5, (n, 2), generator=generator)
    for image, (r, c) in zip(images, corners.tolist()):
        image[:, r:r + 3, c:c + 3] = 1.0
    return images


def train_gan(steps: int, netD: nn.Module, pause: bool = True):
    """DCGAN's loop (pytorch/examples/dcgan), one monitor per model; each logged step's float64
    reference of D (its two loss passes) and of G (its loss through D, as D is at G's step)."""
    torch.manual_seed(0)
    netG = Generator()
    bce = nn.BCELoss()
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    generator = torch.Generator().manual_seed(5)
    expected_d, expected_g = {}, {}
    mon_d = gradscope.monitor(netD, optimizer=optD, weights_every=1)
    mon_g = gradscope.monitor(netG, optimizer=optG, weights_every=1)
    with mon_d, mon_g:
        for step in range(steps):
            real = blobs(16, generator)
            noise = torch.randn(16, 8, 1, 1, generator=generator)
            ones, zeros = torch.ones(16), torch.zeros(16)
            # (1) update D: maximize log(D(x)) + log(1 - D(G(z)))
            netD.zero_grad()
            bce(netD(real), ones).backward()
            fake = netG(noise)
            expected_d[step] = reference(netD, [(real, ones), (fake.detach(), zeros)], bce)
            bce(netD(fake.detach()), zeros).backward()
            optD.step()
            # (2) update G: maximize log(D(G(z))), backpropagated through D
            netG.zero_grad()
            discriminator = copy.deepcopy(netD).double()
            expected_g[step] = reference(netG, [(noise, ones)], lambda out, y: bce(discriminator(out), y))
            if pause:
                with mon_d.paused():  # D's pass for G's loss is not part of D's step
                    output = netD(fake)
            else:
                output = netD(fake)
            bce(output, ones).backward()
            optG.step()
    return mon_d, mon_g, expected_d, expected_g


def test_dcgan_two_monitors_attribute_each_pass_to_its_own_models_step():
    mon_d, mon_g, expected_d, expected_g = train_gan(4, Discriminator())
    for step in range(4):
        # D: its two loss passes only. G's pass through D is paused; the generator loss's
        # gradient on D's parameters is zeroed before D's next step, so it is in no statistic.
        # G: its one forward (run during D's update) and the generator loss backpropagated
        # through D, as D is at G's step.
        for mon, expected in ((mon_d, expected_d[step]), (mon_g, expected_g[step])):
            got = {k: v for k, v in step_values(mon, step).items() if k[1] != "update_ratio"}
            assert set(got) == set(expected)
            assert_matches(got, expected)
    assert_healthy(mon_d)
    assert_healthy(mon_g)


def test_dcgan_without_pausing_counts_the_generator_pass_in_the_discriminators_next_step():
    mon_d, _, expected_d, _ = train_gan(3, Discriminator(), pause=False)
    got = step_values(mon_d, 0)
    assert got[("main.5", "act_rms")] == pytest.approx(expected_d[0][("main.5", "act_rms")], rel=2e-4)
    # from step 1 on, D's step also holds the previous G step's pass: three forwards, not two
    got = step_values(mon_d, 1)
    assert got[("main.0", "out_grad_norm")] > expected_d[1][("main.0", "out_grad_norm")] * (1 + 1e-3)


def test_dcgan_with_dead_discriminator_relus_is_reported_on_the_discriminator():
    mon_d, mon_g, _, _ = train_gan(4, Discriminator(dead=True))
    findings = {f.rule: f for f in mon_d.findings()}
    assert "dead-units" in findings and findings["dead-units"].layers == ["main.1"]
    assert "dead-units" not in {f.rule for f in mon_g.findings()}


# -- a run killed before its first full history part ------------------------------------------

KILLED = textwrap.dedent("""
    import sys, torch, torch.nn as nn, torch.nn.functional as F, gradscope
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(0)
    with gradscope.monitor(model, optimizer=opt, log_dir=sys.argv[1]):  # parts of 100 steps
        for step in range(100000):
            x, y = torch.randn(8, 6, generator=generator), torch.randn(8, 3, generator=generator)
            F.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            print(step, flush=True)
""")


def test_a_run_killed_at_step_5_leaves_its_first_steps_readable(tmp_path):
    run_dir = kill_after(KILLED, tmp_path, steps=5)
    history = read_history(run_dir)
    steps = sorted(history.step.unique().tolist())
    assert steps[:3] == [0, 1, 2] and steps == list(range(len(steps)))  # parts of 1, 2, 4, … steps
    assert read_meta(run_dir)["status"] == "running"
    # step 0 as written equals a float64 reference of the same model and batch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 6, generator=generator), torch.randn(8, 3, generator=generator)
    expected = reference(model, [(x, y)], F.mse_loss)
    got = {(r.layer, r.metric): r.value for r in history[history.step == 0].itertuples()}
    assert_matches(got, expected)
