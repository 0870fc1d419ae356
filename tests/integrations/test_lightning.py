"""The Lightning callback, end to end with the real package on a tiny model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pl = pytest.importorskip("pytorch_lightning")

from gradscope.integrations.lightning import GradscopeCallback  # noqa: E402


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class GradNorms(pl.Callback):
    """Independent record: each parameter's gradient norm in float64, right before the step."""

    def __init__(self) -> None:
        self.norms = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.norms.append({n: p.grad.double().norm().item() for n, p in pl_module.named_parameters()})


@pytest.mark.parametrize("accumulate", [1, 2])
def test_callback_records_each_optimizer_step(tmp_path, accumulate):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 6), torch.randn(64, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    gradscope_cb, reference = GradscopeCallback(every=2, log_dir=tmp_path / "run"), GradNorms()
    trainer = pl.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accumulate_grad_batches=accumulate, callbacks=[gradscope_cb, reference],
                         default_root_dir=tmp_path)
    trainer.fit(Tiny(), loader)
    df = gradscope_cb.monitor.to_dataframe()
    assert sorted(df.step.unique()) == [0, 2, 4]  # optimizer steps, whatever the accumulation
    assert len(reference.norms) == 5
    for step in (0, 2, 4):
        got = df[(df.step == step) & (df.metric == "grad_norm")].set_index("layer").value
        expected = {f"net.{k}" if not k.startswith("net.") else k: v for k, v in reference.norms[step].items()}
        assert got.to_dict() == pytest.approx(expected, rel=1e-5)
    assert (tmp_path / "run" / "findings.json").exists()
    assert not gradscope_cb.monitor._active


def test_a_second_fit_with_the_same_callback_continues_the_run(tmp_path):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 6), torch.randn(64, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    gradscope_cb, model = GradscopeCallback(every=1, log_dir=tmp_path / "run"), Tiny()

    def fit():
        pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, callbacks=[gradscope_cb],
                   default_root_dir=tmp_path).fit(model, loader)

    fit()
    first = gradscope_cb.monitor
    fit()  # a second phase with the same callback and log_dir: refused before ("already holds a run")
    assert gradscope_cb.monitor is first and not first._active
    assert sorted(first.to_dataframe().step.unique()) == list(range(6))


def test_a_job_resumed_from_a_checkpoint_writes_next_to_its_run_with_the_trainers_steps(tmp_path):
    """A restarted job (a new callback, a new model) resumes from a checkpoint with the same
    log_dir: it trains, into <log_dir>-resumed-at-<step>, its steps numbered as Lightning's.
    Before, the run directory of the first job refused it and the resumed fit trained nothing."""
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 6), torch.randn(64, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=8)

    def fit(max_steps, ckpt_path=None):
        callback = GradscopeCallback(every=1, log_dir=tmp_path / "run")
        trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[callback], default_root_dir=tmp_path)
        trainer.fit(Tiny(), loader, ckpt_path=ckpt_path)
        return trainer, callback

    first, _ = fit(3)
    checkpoint = tmp_path / "resume.ckpt"
    first.save_checkpoint(checkpoint)
    with pytest.warns(UserWarning, match="holds the run this training resumes .at step 3"):
        second, callback = fit(6, ckpt_path=checkpoint)
    assert second.global_step == 6
    assert sorted(callback.monitor.to_dataframe().step.unique()) == [3, 4, 5]
    assert list(callback.monitor.pulse_history().step) == [3, 4, 5]  # no rows before the resumed step
    assert (tmp_path / "run-resumed-at-3" / "findings.json").exists()


def test_a_guard_value_no_monitor_takes_is_refused_by_both_callbacks():
    """Before training, with the monitor's own message."""
    from gradscope.errors import UsageError

    pytest.importorskip("transformers")
    from gradscope.integrations.huggingface import GradscopeTrainerCallback as make

    with pytest.raises(UsageError, match=r"Expected `guard` to be 'skip' or None but got 'warn'"):
        make(every=10, guard="warn")
    with pytest.raises(UsageError, match=r"Expected `guard` to be 'skip' or None but got 'warn'"):
        GradscopeCallback(every=10, guard="warn")


class Regression(pl.LightningModule):
    """A ReLU regression under SGD with momentum (or AdamW), its batch ``corrupt`` scaled 30x."""

    def __init__(self, optimizer: str, corrupt: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
        self.optimizer, self.corrupt = optimizer, corrupt
        self.states: dict[str, tuple] = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        if batch_idx == self.corrupt:
            x = x * 30.0
        return F.mse_loss(self.net(x), y)

    def on_train_batch_start(self, batch, batch_idx):
        if batch_idx in (self.corrupt, self.corrupt + 1):
            self.states[f"before {batch_idx}"] = self._state()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if batch_idx in (self.corrupt, self.corrupt + 1):
            self.states[f"after {batch_idx}"] = self._state()

    def _state(self):
        opt = self.trainer.optimizers[0]
        return (copy.deepcopy(self.state_dict()), copy.deepcopy(opt.state_dict()["state"]))

    def configure_optimizers(self):
        if self.optimizer == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=1e-3)
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return torch.equal(torch.as_tensor(a), torch.as_tensor(b))


class DevicePath(GradscopeCallback):
    """The callback with the pulse's torch arithmetic (a GPU's: the decision stays on the device
    and the update is put back from a copy), run on the CPU."""

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self.monitor._host_arithmetic = False


@pytest.mark.parametrize("path", ["cpu", "device-path"])
@pytest.mark.parametrize("optimizer", ["sgd-momentum", "adamw"])
def test_the_guard_holds_back_the_update_of_a_spiking_batch_under_lightning(path, optimizer):
    """Lightning steps its optimizer with a closure (training step, backward,
    on_before_optimizer_step): the guarded step evaluates it first, the callback decides, and the
    update of the corrupt batch is not made: weights and optimizer state bit-identical across
    it, while the next batch trains."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32 * 130, 20, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, :1] * 2), batch_size=32)
    model = Regression(optimizer, corrupt=120)
    callback = (DevicePath if path == "device-path" else GradscopeCallback)(every=100, guard="skip")
    pl.Trainer(max_steps=125, accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, callbacks=[callback]).fit(model, loader)
    mon = callback.monitor
    assert mon.skipped_steps == [120]
    assert mon.events[0].step == 120 and mon.events[0].skipped
    before, after = model.states["before 120"], model.states["after 120"]
    assert _same(before[0], after[0]) and _same(before[1], after[1])
    assert not _same(model.states["before 121"][0], model.states["after 121"][0])  # the next one trains
    assert mon._guard_restore is None and "step" not in vars(model.trainer.optimizers[0])  # put back


class WithLBFGS(Regression):
    def configure_optimizers(self):
        return torch.optim.LBFGS(self.parameters(), lr=0.05, max_iter=2)


def test_the_lightning_guard_says_it_cannot_hold_back_an_lbfgs_step():
    """LBFGS evaluates Lightning's closure itself, several times: the callback says so at the
    start and records no skip (before, every evaluation's decision counted as a skipped step
    while the update went through)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32 * 40, 20, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, :1] * 2), batch_size=32)
    callback = GradscopeCallback(every=100, guard="skip")
    with pytest.warns(UserWarning, match=r"cannot guard LBFGS"):
        pl.Trainer(max_steps=40, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False,
                   callbacks=[callback]).fit(WithLBFGS("lbfgs", corrupt=30), loader)
    assert callback.monitor.skipped_steps == []
    assert not any(e.skipped for e in callback.monitor.events)


def test_without_the_guard_the_spiking_batch_moves_the_weights_under_lightning():
    """The other side: the same run unguarded does update on the corrupt batch."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32 * 130, 20, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, :1] * 2), batch_size=32)
    model = Regression("sgd-momentum", corrupt=120)
    callback = GradscopeCallback(every=100)
    pl.Trainer(max_steps=125, accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, callbacks=[callback]).fit(model, loader)
    assert callback.monitor.skipped_steps == [] and not callback.monitor.events[0].skipped
    assert not _same(model.states["before 120"][0], model.states["after 120"][0])


class Restarting(Tiny):
    """Tiny under a schedule that drops the learning rate 100x and restores it every 3 steps."""

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 if step % 3 == 0 else 0.01)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class LearningRates(pl.Callback):
    def __init__(self) -> None:
        self.lrs = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def test_the_callback_reads_the_schedules_learning_rate_for_its_spike_events():
    """The learning rate of each step, as the schedule set it, reaches the monitor (a spike
    right after a warm restart is explained by it); before, the callback's monitor read none."""
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 6), torch.randn(64, 1))
    callback, reference = GradscopeCallback(every=10), LearningRates()
    pl.Trainer(max_steps=7, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, callbacks=[reference, callback]).fit(
        Restarting(), torch.utils.data.DataLoader(data, batch_size=8))
    assert reference.lrs == pytest.approx([0.05, 5e-4, 5e-4] * 2 + [0.05])
    assert list(callback.monitor._lrs) == pytest.approx(reference.lrs)


def test_a_callback_given_twice_records_each_step_and_loss_once(tmp_path):
    """``callbacks=[cb, cb]``: each hook ran twice, so every step was recorded twice and each loss
    counted twice. The second calls are ignored, with a warning."""
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 6), torch.randn(64, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    gradscope_cb, reference = GradscopeCallback(every=1), GradNorms()
    trainer = pl.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[gradscope_cb, gradscope_cb, reference], default_root_dir=tmp_path)
    model = Tiny()
    before = copy.deepcopy(model.net).double()
    with pytest.warns(UserWarning, match="this callback is in the trainer's callbacks twice"):
        trainer.fit(model, loader)
    df = gradscope_cb.monitor.to_dataframe()
    assert sorted(df.step.unique()) == list(range(6))
    pulse = gradscope_cb.monitor.pulse_history()
    assert pulse["step"].tolist() == list(range(6))
    totals = [sum(v * v for v in norms.values()) ** 0.5 for norms in reference.norms]
    assert pulse["grad_norm"].tolist() == pytest.approx(totals, rel=1e-5)
    x, y = next(iter(loader))  # the first step's loss, counted once
    assert pulse["loss"].iloc[0] == pytest.approx(float(F.mse_loss(before(x.double()), y.double())), rel=1e-5)


def test_the_short_last_batch_is_read_as_noisier_when_training_step_calls_the_layers(tmp_path, monkeypatch):
    """Tiny's training_step calls self.net, so its own forward (whose hook reads the batch) never
    runs: the epoch's last batch of one sample was read as a full one, and its loss and gradient
    spikes alarmed and were skipped. The callback now reads the batch Lightning hands over."""
    import importlib

    monitor_module = importlib.import_module("gradscope.monitor")  # (gradscope.monitor is also the function)
    noises = []
    original = monitor_module._noise
    monkeypatch.setattr(monitor_module, "_noise", lambda sizes, usual: noises.append(original(sizes, usual)) or noises[-1])
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64 * 5 + 1, 6, generator=g), torch.randn(64 * 5 + 1, 1, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    trainer = pl.Trainer(max_epochs=3, callbacks=[GradscopeCallback(every=10)], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(Tiny(), loader)
    assert len(noises) == 18
    short = [noises[s] for s in range(5, 18, 6)]
    assert short[1:] == pytest.approx([8.0, 8.0], rel=0.05)  # sqrt(64 / 1); the first epoch sets the usual size
    assert all(n == 1.0 for s, n in enumerate(noises) if s % 6 != 5)
