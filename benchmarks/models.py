"""The benchmark models, defined here (no torchvision): an MLP, a CNN with BatchNorm, a small
GPT-style transformer, and on a GPU a GPT-2-small-sized transformer and a ResNet-50-sized CNN."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def mlp() -> nn.Module:
    """784-512x6-10 with ReLU (batch 128)."""
    layers: list[nn.Module] = [nn.Linear(784, 512), nn.ReLU()]
    for _ in range(5):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    layers.append(nn.Linear(512, 10))
    return nn.Sequential(*layers)


def cnn(width: int = 32) -> nn.Module:
    """Six 3x3 conv + BatchNorm + ReLU layers in three stages, global pooling, a linear head
    (3x32x32 inputs)."""
    layers: list[nn.Module] = []
    channels = 3
    for stage, out in enumerate((width, 2 * width, 4 * width)):
        for i in range(2):
            stride = 2 if (i == 0 and stage > 0) else 1
            layers += [nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))


class Block(nn.Module):
    """Pre-LN transformer block with causal self-attention and a GELU MLP."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int = 1000, d: int = 128, layers: int = 4, heads: int = 4, context: int = 64) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, d)
        self.positions = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "out.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers))

    def forward(self, ids):
        x = self.tokens(ids) + self.positions(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int) -> None:
        super().__init__()
        cout = 4 * mid
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


def resnet50() -> nn.Module:
    """ResNet-50's layout (3-4-6-3 bottlenecks, 25.6 M parameters) for 224x224 inputs."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                               nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for mid, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, mid, stride if i == 0 else 1))
            cin = 4 * mid
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000))


def gpt2_small() -> nn.Module:
    """GPT-2 small's shape: 12 blocks, d 768, 12 heads, vocabulary 50257, context 1024."""
    return GPT(vocab=50257, d=768, layers=12, heads=12, context=1024)


def setup(name: str, device: str):
    """(model, inputs, targets, loss) for a benchmark model."""
    g = torch.Generator().manual_seed(0)
    if name == "mlp":
        model, x = mlp(), torch.randn(128, 784, generator=g)
        y = torch.randint(0, 10, (128,), generator=g)
    elif name == "cnn":
        model, x = cnn(16), torch.randn(32, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (32,), generator=g)
    elif name == "gpt":
        model, x = GPT(), torch.randint(0, 1000, (8, 64), generator=g)
        y = torch.randint(0, 1000, (8, 64), generator=g)
    elif name == "gpt2-small":
        model, x = gpt2_small(), torch.randint(0, 50257, (8, 1024), generator=g)
        y = torch.randint(0, 50257, (8, 1024), generator=g)
    elif name == "resnet50":
        model, x = resnet50(), torch.randn(64, 3, 224, 224, generator=g)
        y = torch.randint(0, 1000, (64,), generator=g)
    else:
        raise ValueError(f"unknown model {name!r}; choose mlp, cnn, gpt, gpt2-small, resnet50")

    def loss(out, target):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))

    return model.to(device), x.to(device), y.to(device), loss
