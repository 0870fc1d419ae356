"""Healthy standard models under their usual recipes get the verdict ``trains`` and no error
finding: a healthy model called broken is the worst mistake a diagnosis can make."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gradscope
from tests.zoo import ResNet


def _assert_trains(report):
    errors = [f"{f.code} {f.rule}: {f.message}" for f in report.findings if f.severity == "error"]
    assert report.verdict.label == "trains", report.verdict.message
    assert not errors, errors


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def _tokens(vocab: int, batch: int = 4, length: int = 32):
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids.clone()}


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_hugging_face_language_models_under_adamw(transformers, name):
    torch.manual_seed(0)
    if name == "gpt2":
        config = transformers.GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=256, n_positions=64)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(num_hidden_layers=4, hidden_size=64, intermediate_size=128,
                                          num_attention_heads=4, num_key_value_heads=4, vocab_size=256,
                                          max_position_embeddings=64)
        model = transformers.LlamaForCausalLM(config)
    report = gradscope.diagnose(model, _tokens(256), optimizer=torch.optim.AdamW(model.parameters(), lr=3e-4))
    _assert_trains(report)


def test_hugging_face_bert_under_adamw(transformers):
    torch.manual_seed(0)
    config = transformers.BertConfig(num_hidden_layers=4, hidden_size=64, intermediate_size=128,
                                     num_attention_heads=4, vocab_size=256, max_position_embeddings=64)
    model = transformers.BertForMaskedLM(config)
    report = gradscope.diagnose(model, _tokens(256), optimizer=torch.optim.AdamW(model.parameters(), lr=3e-4))
    _assert_trains(report)


def test_batchnorm_resnet_under_sgd_momentum():
    torch.manual_seed(0)
    model = ResNet(blocks=6)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 16, 16, generator=g), torch.randint(0, 10, (32,), generator=g)
    report = gradscope.diagnose(model, x, lambda out: F.cross_entropy(out, y),
                                optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    _assert_trains(report)


def test_pre_ln_transformer_under_adam():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True, norm_first=True)
    model = nn.TransformerEncoder(layer, 6, norm=nn.LayerNorm(64), enable_nested_tensor=False)
    x = torch.randn(8, 16, 64, generator=torch.Generator().manual_seed(0))
    report = gradscope.diagnose(model, x, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3))
    _assert_trains(report)
