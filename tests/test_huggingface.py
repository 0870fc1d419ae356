"""A Hugging Face model built from a config (no weights): ModelOutput outputs, real module tree."""

from __future__ import annotations

import pytest
import torch

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
