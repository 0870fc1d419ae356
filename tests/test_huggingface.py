"""A Hugging Face model built from a config (no weights): ModelOutput outputs, real module tree."""

from __future__ import annotations

import pytest
import torch

import gradscope
from tests.test_monitor import train_and_compare

transformers = pytest.importorskip("transformers")


def test_bert_from_config_matches_the_reference():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=16, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = transformers.BertForSequenceClassification(config)

    def make():
        ids = torch.randint(0, 50, (4, 7))
        return {"input_ids": ids, "labels": torch.randint(0, 3, (4,))}, None

    df = train_and_compare(model, make, loss_fn=lambda out, _: out["loss"], steps=2)
    layers = set(df.layer)
    assert "bert.encoder.layer.1.output.dense" in layers
    assert ("bert.pooler.activation", "saturation") in set(zip(df.layer, df.metric))


def test_a_fine_tuned_classifier_with_its_own_loss_is_not_called_stalled():
    """A BERT classifier that computes its own loss (``labels`` given), trained to a loss of 1e-3:
    the probe makes its classifier's output constant to get a constant prediction's loss, checked
    here against the cross-entropy of each constant computed by hand in float64. Untrained, it
    does no better than a constant; trained, it fits the batch, and under SGD its tiny updates are
    information, not "the model will barely learn"."""
    torch.manual_seed(0)
    config = transformers.BertConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                                     num_attention_heads=4, vocab_size=200, max_position_embeddings=64,
                                     num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = transformers.BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(1)

    def batch():
        x = torch.randint(0, 200, (32, 16), generator=g)
        return {"input_ids": x, "labels": (x[:, 0] < 100).long()}

    probe_batch = batch()
    sgd = lambda: torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # noqa: E731
    report = gradscope.diagnose(model, probe_batch, optimizer=sgd())
    model.train()
    with torch.no_grad():
        logits = model(input_ids=probe_batch["input_ids"]).logits.double()
    labels = probe_batch["labels"]
    constants = [logits.mean(0, keepdim=True), torch.zeros_like(logits[:1]),
                 logits.softmax(-1).mean(0, keepdim=True).log()]
    expected = min(float(torch.nn.functional.cross_entropy(c.expand_as(logits), labels)) for c in constants)
    assert report.dynamics.constant_loss == pytest.approx(expected, rel=1e-4)
    assert report.dynamics.fit > 0.9
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(300):
        loss = model(**batch()).loss
        adamw.zero_grad()
        loss.backward()
        adamw.step()
    report = gradscope.diagnose(model, probe_batch, optimizer=sgd())
    assert report.dynamics.deeply_fitted and report.verdict.label == "trains"
    assert [f.severity for f in report.findings if f.rule == "updates-off-band"] in ([], ["info"])
