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
