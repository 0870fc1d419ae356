"""The transformers TrainerCallback, end to end with the real Trainer on a tiny model."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from gradscope.integrations.huggingface import GradscopeTrainerCallback  # noqa: E402


class GradNorms(transformers.TrainerCallback):
    """Independent record: each parameter's gradient norm in float64, right before the step."""

    def __init__(self) -> None:
        self.norms = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.norms.append({n: p.grad.double().norm().item() for n, p in model.named_parameters()
                           if p.grad is not None})


class Rows(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 50, (n, 8), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def _bert_and_args(tmp_path, **options):
    """A 2-layer BERT classifier built from a config, and CPU training arguments (``options`` added)."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=1e-3, report_to=[],
        save_strategy="no", logging_strategy="no", use_cpu=True, dataloader_num_workers=0, **options,
    )
    return transformers.BertForSequenceClassification(config), args


def test_trainer_callback_records_each_optimizer_step(tmp_path):
    model, args = _bert_and_args(tmp_path, max_steps=4, gradient_accumulation_steps=2, max_grad_norm=1.0)
    gradscope_cb, reference = GradscopeTrainerCallback(every=1), GradNorms()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Rows(64),
                                   callbacks=[gradscope_cb, reference])
    trainer.train()
    df = gradscope_cb.monitor.to_dataframe()
    assert sorted(df.step.unique()) == [0, 1, 2, 3]
    assert len(reference.norms) == 4
    for step in range(4):
        got = df[(df.step == step) & (df.metric == "grad_norm")].set_index("layer").value.to_dict()
        assert got == pytest.approx(reference.norms[step], rel=1e-5)
    assert "bert.encoder.layer.1.output.dense" in set(df[df.metric == "out_grad_norm"].layer)
    assert not gradscope_cb.monitor._active


class Failing(Rows):
    """Rows whose fifth read raises (once): a run that fails in its second step."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.reads = 0

    def __getitem__(self, i):
        self.reads += 1
        if self.reads == 5:
            raise RuntimeError("bad sample")
        return super().__getitem__(i)


def test_train_again_after_a_run_that_raised_with_the_same_callback(tmp_path):
    model, args = _bert_and_args(tmp_path, max_steps=3)
    gradscope_cb = GradscopeTrainerCallback(every=1, log_dir=tmp_path / "run")
    data = Failing(64)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[gradscope_cb])
    with pytest.raises(RuntimeError, match="bad sample"):
        trainer.train()
    assert gradscope_cb.monitor._active  # the Trainer has no exception callback
    trainer.train()  # refused before: the model was still watched by the first run's monitor
    assert not gradscope_cb.monitor._active
    assert len(gradscope_cb.monitor.to_dataframe().step.unique()) >= 3


class LearningRates(transformers.TrainerCallback):
    def __init__(self) -> None:
        self.lrs = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def test_the_callback_reads_the_trainers_scheduled_learning_rate(tmp_path):
    """The Trainer's linear warm-up sets the learning rate of each step; the monitor reads it (for
    its spike events' lr and lr_before) from the optimizer the Trainer passes to the callback."""
    model, args = _bert_and_args(tmp_path, max_steps=4, warmup_steps=4)
    gradscope_cb, reference = GradscopeTrainerCallback(every=10), LearningRates()
    transformers.Trainer(model=model, args=args, train_dataset=Rows(64), callbacks=[reference, gradscope_cb]).train()
    assert reference.lrs == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4])
    assert list(gradscope_cb.monitor._lrs) == pytest.approx(reference.lrs)


class Regression(torch.nn.Module):
    """A small regression whose every parameter is read whole by the pulse (at most 1024
    elements each, so its norms are exact); the inputs of its forward call ``corrupt`` are
    multiplied by 30."""

    def __init__(self, corrupt: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
        self.calls, self.corrupt = 0, corrupt

    def forward(self, x, y):
        if self.training:
            self.calls += 1
            if self.calls == self.corrupt:
                x = x * 30.0
        return {"loss": torch.nn.functional.mse_loss(self.net(x), y)}


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x[:, :1] * 2

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def test_the_spike_detector_reads_the_gradient_norm_before_the_trainer_clips_it(tmp_path, monkeypatch):
    """The Trainer clips (max_grad_norm=1.0, its default) before on_pre_optimizer_step: the
    detector takes its norms when the step's last backward pass ends, so the total it sees is the
    norm clip_grad_norm_ measured before clipping (recorded independently), and the corrupt
    step's gradient spike is caught. Before, every norm read at most 1.0 and the spike was not a
    gradient spike."""
    before_clipping = []
    clip = torch.nn.utils.clip_grad_norm_

    def recorded(parameters, *args, **kwargs):
        norm = clip(parameters, *args, **kwargs)
        before_clipping.append(float(norm))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recorded)
    model = Regression(corrupt=2 * 70 + 1)  # the first micro-batch of step 70
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=16, learning_rate=1e-3, max_steps=80,
        gradient_accumulation_steps=2, max_grad_norm=1.0, report_to=[], save_strategy="no",
        logging_strategy="no", use_cpu=True, dataloader_num_workers=0)
    callback = GradscopeTrainerCallback(every=100)
    transformers.Trainer(model=model, args=args, train_dataset=Pairs(4096), callbacks=[callback]).train()
    pulse = callback.monitor.pulse_history()
    assert len(before_clipping) == 80 and max(before_clipping) > 10  # clipping did act
    assert pulse.grad_norm.tolist() == pytest.approx(before_clipping, rel=1e-5)
    event = callback.monitor.events[0]
    assert event.step == 70 and "gradient spike" in event.alarms and event.micro_batch == 0


class StateAround(transformers.TrainerCallback):
    """Independent record: the weights and the optimizer's state before and after each step."""

    def __init__(self) -> None:
        self.before, self.after = {}, {}

    @staticmethod
    def _copy(model, optimizer):
        inner = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
        state = [{k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()} for s in inner.state.values()]
        return [p.detach().clone() for p in model.parameters()], state

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.before[state.global_step] = self._copy(model, optimizer)

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.after[state.global_step] = self._copy(model, optimizer)


def _same(a, b) -> bool:
    (weights_a, state_a), (weights_b, state_b) = a, b
    if not all(torch.equal(x, y) for x, y in zip(weights_a, weights_b)) or len(state_a) != len(state_b):
        return False
    return all(sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) if torch.is_tensor(sa[k]) else sa[k] == sb[k]
                                              for k in sa) for sa, sb in zip(state_a, state_b))


@pytest.mark.parametrize("guard", ["skip", None])
def test_the_guard_holds_back_the_update_of_a_spiking_batch_under_the_trainer(tmp_path, guard, recwarn):
    """The Trainer steps its optimizer (AdamW, wrapped by Accelerate) without a closure, right
    after on_pre_optimizer_step: the callback decides there and the optimizer's wrapped step
    holds the corrupt step's update back, weights and optimizer state bit-identical across it,
    and training goes on. Unguarded, the same step moves them. Before, the callback refused
    guard='skip'."""
    model = Regression(corrupt=2 * 70 + 1)  # the first micro-batch of step 70
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=16, learning_rate=1e-3, max_steps=80,
        gradient_accumulation_steps=2, max_grad_norm=1.0, report_to=[], save_strategy="no",
        logging_strategy="no", use_cpu=True, dataloader_num_workers=0)
    recorder, callback = StateAround(), GradscopeTrainerCallback(every=100, guard=guard)
    transformers.Trainer(model=model, args=args, train_dataset=Pairs(4096), callbacks=[callback, recorder]).train()
    assert callback.monitor.events[0].step == 70
    assert _same(recorder.before[70], recorder.after[70]) is (guard == "skip")
    assert not _same(recorder.before[69], recorder.after[69]) and not _same(recorder.before[71], recorder.after[71])
    assert callback.monitor.skipped_steps == ([70] if guard else [])
    assert callback.monitor.events[0].skipped is (guard == "skip")
    assert not [w for w in recwarn if "gradscope" in str(w.message)]


def test_a_callback_given_twice_records_each_step_once(tmp_path):
    """``callbacks=[cb, cb]``: each hook ran twice and every step was recorded twice (16 steps for
    8); the second calls are ignored, with a warning."""
    model, args = _bert_and_args(tmp_path, max_steps=4)
    gradscope_cb, reference = GradscopeTrainerCallback(every=1), GradNorms()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Rows(64),
                                   callbacks=[gradscope_cb, gradscope_cb, reference])
    with pytest.warns(UserWarning, match="this callback is in the trainer's callbacks twice"):
        trainer.train()
    df = gradscope_cb.monitor.to_dataframe()
    assert sorted(df.step.unique()) == [0, 1, 2, 3]
    pulse = gradscope_cb.monitor.pulse_history()
    assert pulse["step"].tolist() == [0, 1, 2, 3]
    for step in range(4):
        got = df[(df.step == step) & (df.metric == "grad_norm")].set_index("layer").value.to_dict()
        assert got == pytest.approx(reference.norms[step], rel=1e-5)
