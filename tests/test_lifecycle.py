"""The monitor leaves no trace, survives its own failures, and rejects bad arguments clearly."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gradscope
import gradscope.hooks
from tests import models


def hook_counts(model: nn.Module) -> list[int]:
    return [
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        + len(m._backward_pre_hooks) + len(getattr(m, "_forward_hooks_always_called", {}))
        for m in model.modules()
    ]


def attributes(model: nn.Module) -> list[set]:
    return [set(vars(m)) for m in model.modules()]


def train(model, opt, steps, monitor=None, fail_at=None):
    torch.manual_seed(3)
    for step in range(steps):
        if step == fail_at:
            raise RuntimeError("the training loop failed")
        x, y = torch.randn(8, 3, 6, 6), torch.randn(8, 3)
        F.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("fail_at", [None, 2])
def test_model_is_left_as_it_was_and_trains_identically(fail_at):
    torch.manual_seed(0)
    model = models.conv_bn()
    twin = copy.deepcopy(model)
    before_hooks, before_attrs = hook_counts(model), attributes(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    if fail_at is None:
        with gradscope.monitor(model, every=2, optimizer=opt):
            train(model, opt, 5)
    else:
        with pytest.raises(RuntimeError, match="the training loop failed"):
            with gradscope.monitor(model, every=2, optimizer=opt):
                train(model, opt, 5, fail_at=fail_at)
    train(twin, twin_opt, 5 if fail_at is None else fail_at)
    assert hook_counts(model) == before_hooks
    assert attributes(model) == before_attrs
    assert len(opt._optimizer_step_pre_hooks) == len(opt._optimizer_step_post_hooks) == 0
    assert model.training
    assert torch._C._len_torch_function_stack() == 0
    state, twin_state = model.state_dict(), twin.state_dict()
    assert list(state) == list(twin_state)
    for key in state:  # monitoring changed no number of the training
        assert torch.equal(state[key], twin_state[key]), key


@pytest.mark.parametrize("copy_with", ["torch.save", "copy.deepcopy"])
def test_a_checkpoint_or_copy_made_while_watched_carries_no_monitor(copy_with):
    """``torch.save(model)`` mid-training, and an EMA copy, get inert hooks: the checkpoint pickles,
    and neither copy records its forwards anywhere."""
    import io

    torch.manual_seed(0)
    model = models.conv_bn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 3, 6, 6)
    with gradscope.monitor(model, every=1, optimizer=opt) as mon:  # hooks on every module
        train(model, opt, 2)
        if copy_with == "torch.save":
            buffer = io.BytesIO()
            torch.save(model, buffer)
            buffer.seek(0)
            twin = torch.load(buffer, weights_only=False)
        else:
            twin = copy.deepcopy(model)
        rows = len(mon.to_dataframe())
        with torch.no_grad():
            expected = model(x)
        for _ in range(3):
            F.mse_loss(twin(x), torch.zeros_like(expected)).backward()
        assert len(mon.to_dataframe()) == rows  # the copy's passes were not recorded
    # the copy's first forward removed the inert hooks it was made with: it is left unwatched
    assert sum(hook_counts(twin)) == 0
    with torch.no_grad():
        assert torch.equal(twin(x), expected)


def test_model_raising_inside_forward_leaves_no_hooks_or_modes():
    class Boom(nn.Module):
        def forward(self, x):
            F.relu(x)  # a captured functional call before the failure
            raise ValueError("bad input shape")

    model = nn.Sequential(nn.Linear(3, 3), Boom())
    with pytest.raises(ValueError, match="bad input shape"):
        with gradscope.monitor(model):
            model(torch.randn(2, 3))
    assert torch._C._len_torch_function_stack() == 0
    assert sum(hook_counts(model)) == 0


def test_train_and_eval_modes_are_the_users_per_module():
    """The monitor changes no module's mode, so leaving the block changes none either: a
    BatchNorm frozen with .eval() stays frozen, and a mode set inside the block stays set."""
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    model[1].eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.monitor(model, optimizer=opt):
        model(torch.randn(16, 4)).pow(2).mean().backward()
        opt.step()
    assert model.training and not model[1].training
    running_mean = model[1].running_mean.clone()
    model(torch.randn(16, 4))
    assert torch.equal(model[1].running_mean, running_mean)  # still frozen

    with gradscope.monitor(model):
        model.eval()
    assert not any(m.training for m in model.modules())


def test_failure_inside_a_hook_warns_once_and_training_goes_on(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("reduction failed")

    monkeypatch.setattr(gradscope.hooks, "flat_count", broken)
    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(gradscope.GradscopeWarning) as caught:
        with gradscope.monitor(model, optimizer=opt) as mon:
            train_mlp(model, opt, 3)
    messages = [str(w.message) for w in caught]
    # one warning per (layer, statistic), naming both, however many steps failed
    assert sorted(m.split("'")[1] for m in messages) == ["1", "5", "7"]
    assert all("saturation" in m and "reduction failed" in m and "strict=True" in m for m in messages)
    df = mon.to_dataframe()
    assert "saturation" not in set(df.metric)
    assert sorted(df.step.unique().tolist()) == [0, 1, 2]
    assert "dead_fraction" in set(df.metric)


def test_strict_reraises_inside_hooks(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("reduction failed")

    monkeypatch.setattr(gradscope.hooks, "flat_count", broken)
    model = models.mlp()
    with pytest.raises(RuntimeError, match="reduction failed"):
        with gradscope.monitor(model, strict=True):
            model(torch.randn(2, 6))
    assert sum(hook_counts(model)) == 0


def train_mlp(model, opt, steps):
    for _ in range(steps):
        F.mse_loss(model(torch.randn(8, 6)), torch.randn(8, 3)).backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every": 0}, ValueError, r"Expected `every` to be a positive int but got 0; pass every=1"),
        ({"every": -3}, ValueError, r"`every` .* got -3"),
        ({"every": 2.5}, TypeError, r"Expected `every` to be a positive int but got 2.5 \(float\)"),
        ({"every": True}, TypeError, r"`every` .* got True \(bool\)"),
        ({"strict": "yes"}, TypeError, r"Expected `strict` to be a bool but got 'yes'"),
        ({"log_dir": 3}, TypeError, r"Expected `log_dir` to be a path but got 3 \(int\)"),
    ],
)
def test_bad_options_say_what_was_given_and_expected(kwargs, error, match):
    with pytest.raises(error, match=match):
        gradscope.monitor(models.mlp(), **kwargs)


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match=r"Expected `model` to be a torch.nn.Module but got function"):
        gradscope.monitor(lambda x: x)


def test_optimizer_must_own_the_models_parameters():
    other = nn.Linear(2, 2)
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"The optimizer \(SGD, 2 parameters\) owns none of the model's parameters"):
        gradscope.monitor(models.mlp(), optimizer=opt)
    with pytest.raises(TypeError, match=r"Expected `optimizer` to be a torch.optim.Optimizer but got dict"):
        gradscope.monitor(models.mlp(), optimizer={"lr": 0.1})


def test_a_second_monitor_on_the_same_model_or_a_part_of_it_is_refused():
    model = models.mlp()
    with gradscope.monitor(model):
        with pytest.raises(ValueError, match="This model is already watched by another gradscope monitor"):
            gradscope.monitor(model).start()
        with pytest.raises(ValueError, match="This model shares a Linear module with a Sequential that is already watched"):
            with gradscope.monitor(model[0]):
                pass
    with gradscope.monitor(model):  # free again once the first block is left
        pass


def test_mon_step_with_an_optimizer_is_refused():
    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.monitor(model, optimizer=opt) as mon:
        with pytest.raises(ValueError, match="remove the mon.step"):
            mon.step()


class BrokenWriter:
    """A SummaryWriter stand-in whose flush fails (a full disk, a closed file)."""

    def add_scalar(self, *args, **kwargs):
        pass

    def add_custom_scalars(self, *args, **kwargs):
        pass

    def add_text(self, *args, **kwargs):
        pass

    def flush(self):
        raise OSError("disk full")


@pytest.mark.parametrize("strict", [False, True])
def test_a_failing_clean_up_still_removes_everything(strict):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = gradscope.monitor(model, optimizer=opt, tensorboard=BrokenWriter(), strict=strict).start()
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    if strict:
        with pytest.raises(OSError, match="disk full"):
            mon.stop()
    else:
        with pytest.warns(gradscope.GradscopeWarning, match="disk full"):
            mon.stop()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    gradscope.monitor(model, optimizer=opt).start().stop()  # not left registered


@pytest.mark.parametrize("fail_in", ["tensorboard", "run directory"])
def test_a_start_that_fails_halfway_leaves_nothing_installed(tmp_path, monkeypatch, fail_in):
    """A sink that cannot open (a read-only TensorBoard directory, a full disk) makes start()
    raise with every hook, optimizer hook and registration already removed: the model trains
    unmonitored as before and a later monitor can watch it."""
    import gradscope.sinks.run_directory as run_directory
    import gradscope.sinks.tensorboard as tensorboard

    def refuse(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if fail_in == "tensorboard":
        monkeypatch.setattr(tensorboard.TensorBoardSink, "__init__", refuse)
        options = {"tensorboard": str(tmp_path / "tb")}
    else:
        monkeypatch.setattr(run_directory, "write_meta", refuse)
        options = {"log_dir": tmp_path / "run"}
    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = gradscope.monitor(model, optimizer=opt, **options)
    with pytest.raises(OSError, match="No space left"):
        mon.start()
    assert sum(hook_counts(model)) == 0
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    model(torch.randn(4, 6)).sum().backward()  # an unmonitored step records nothing
    opt.step()
    assert mon.to_dataframe().empty
    monkeypatch.undo()
    with gradscope.monitor(model, optimizer=opt) as again:  # no "already watched"
        model(torch.randn(4, 6)).sum().backward()
        opt.step()
    assert not again.to_dataframe().empty


def test_a_log_dir_that_cannot_be_created_is_a_usage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(gradscope.UsageError, match="cannot be used as a run directory"):
        gradscope.monitor(models.mlp(), log_dir=blocker / "run")


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_log_dir_is_refused_not_read_as_the_current_directory(empty):
    with pytest.raises(gradscope.UsageError, match="`log_dir` is empty"):
        gradscope.monitor(models.mlp(), log_dir=empty)


def test_a_start_that_fails_after_the_sinks_opened_closes_them_and_leaves_the_log_dir_reusable(
        tmp_path, monkeypatch):
    import threading

    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    threads = threading.active_count()

    def refuse(self):
        raise RuntimeError("hooks cannot be installed")

    monkeypatch.setattr(gradscope.hooks.HookManager, "attach", refuse)
    mon = gradscope.monitor(model, optimizer=opt, log_dir=tmp_path / "run", tensorboard=tmp_path / "tb")
    with pytest.raises(RuntimeError, match="hooks cannot be installed"):
        mon.start()
    monkeypatch.undo()
    assert threading.active_count() == threads  # the TensorBoard writer's thread is gone
    assert not (tmp_path / "run" / "meta.json").exists()
    with gradscope.monitor(model, optimizer=opt, log_dir=tmp_path / "run") as again:  # not refused
        model(torch.randn(4, 6)).sum().backward()
        opt.step()
    assert not again.to_dataframe().empty


def test_modules_changed_between_blocks_are_followed():
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = gradscope.monitor(model, optimizer=opt)

    def step():
        model(torch.randn(16, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    with mon:
        step()
    model[1] = nn.ReLU()
    with mon:
        step()
    df = mon.to_dataframe()
    assert ("1", "dead_fraction") in set(zip(df[df.step == 1].layer, df[df.step == 1].metric))
    assert dict(zip(mon.layers.layer, mon.layers.type))["1"] == "ReLU"


def test_setting_the_same_parameter_again_is_not_a_change(monkeypatch):
    """Frameworks that set the same parameters again around every forward (FSDP's
    use_orig_params) cost no re-synchronisation."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.monitor(model, every=100, optimizer=opt) as mon:
        follows = []
        monkeypatch.setattr(mon, "_follow_new_structure", lambda: follows.append(1))
        for _ in range(5):
            weight = model[0].weight
            del model[0].weight
            model[0].weight = weight
            model(torch.randn(16, 4)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    assert follows == []


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_a_torchscript_model_is_refused_with_the_way_out():
    scripted = torch.jit.script(nn.Linear(4, 2))
    with pytest.raises(gradscope.UsageError, match="TorchScript module .* Pass the nn.Module"):
        gradscope.monitor(scripted, optimizer=torch.optim.SGD(scripted.parameters(), lr=0.1))
