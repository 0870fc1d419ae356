"""Models for the diagnose tests: healthy ones that must raise no alarm and broken ones with the
finding each must yield."""

from __future__ import annotations

import torch
import torch.nn as nn

from tests.models import LSTMRegressor, conv_bn
from gradscope.rules.example_models import Sqrt, he, stack, x64, xavier_tanh


class Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


class BasicBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ResNet(nn.Module):
    def __init__(self, blocks: int = 8, channels: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU())
        self.blocks = nn.Sequential(*[BasicBlock(channels) for _ in range(blocks)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, 10)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


class PooledLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.lstm = nn.LSTM(32, 64, num_layers=2, batch_first=True)
        self.head = nn.Linear(64, 5)

    def forward(self, tokens):
        return self.head(self.lstm(self.embed(tokens))[0].mean(dim=1))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def transformer(norm_first: bool) -> nn.Module:
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first)
    return nn.TransformerEncoder(layer, num_layers=6, enable_nested_tensor=False)


def bert():
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=64)
    return BertModel(config), {"input_ids": torch.randint(0, 200, (4, 16), generator=gen())}


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=200, n_embd=32, n_layer=4, n_head=4, n_positions=32,
                        bos_token_id=0, eos_token_id=0)
    ids = torch.randint(0, 200, (4, 16), generator=gen())
    return GPT2LMHeadModel(config), {"input_ids": ids, "labels": ids}


HEALTHY = {
    "relu-mlp-he": lambda: (stack(6, nn.ReLU, init=he), x64()),
    "tanh-mlp-xavier": lambda: (stack(6, nn.Tanh, init=xavier_tanh), x64()),
    "resnet-batchnorm": lambda: (ResNet(), torch.randn(16, 3, 16, 16, generator=gen())),
    "conv-batchnorm": lambda: (conv_bn(), torch.randn(16, 3, 8, 8, generator=gen())),
    "transformer-pre-ln": lambda: (transformer(True), torch.randn(8, 10, 32, generator=gen())),
    "transformer-post-ln": lambda: (transformer(False), torch.randn(8, 10, 32, generator=gen())),
    "lstm-pooled": lambda: (PooledLSTM(), torch.randint(0, 100, (8, 20), generator=gen())),
    "lstm-last-step": lambda: (LSTMRegressor(), torch.randn(8, 10, 5, generator=gen())),
    "hf-bert": bert,
    "hf-gpt2-lm": gpt2,
}

BROKEN = {
    # name: (factory, the rules expected)
    "sigmoid-12-default-init": (lambda: (stack(12, nn.Sigmoid), x64()), {"vanishing-gradient"}),
    "sigmoid-12-xavier": (lambda: (stack(12, nn.Sigmoid, init=nn.init.xavier_normal_), x64()),
                          {"vanishing-gradient"}),
    "tanh-20-default-init": (lambda: (stack(20, nn.Tanh), x64()), {"vanishing-gradient"}),
    "tanh-6-normal-init": (lambda: (stack(6, nn.Tanh, init=nn.init.normal_), x64()),
                           {"saturated-activations", "init-mismatch"}),
    # with the default init the biases dominate the shrinking pre-activations deep in the stack,
    # and units with a negative bias are dead for the whole batch
    "relu-20-default-init": (lambda: (stack(20, nn.ReLU), x64()),
                             {"vanishing-gradient", "init-mismatch", "dead-units"}),
    "relu-8-negative-bias": (lambda: (stack(8, nn.ReLU, init=he, bias=-2.0), x64()), {"dead-units"}),
    "linear-10-normal-init": (lambda: (stack(10, None, init=nn.init.normal_), x64()),
                              {"exploding-gradient", "init-mismatch"}),
    "nan-born-in-backward": (
        lambda: (nn.Sequential(nn.Linear(8, 16), nn.ReLU(), Sqrt(), nn.Linear(16, 16), nn.Tanh(),
                               nn.Linear(16, 1)), x64(8)), {"nonfinite-gradient"}),
    "nan-born-in-forward": (
        lambda: (nn.Sequential(nn.Linear(8, 16), Log(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)),
                 x64(8)), {"nonfinite-gradient"}),
}
