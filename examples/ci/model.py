"""The model file the CI example checks: a small residual MLP classifier for 8x8 digits.

`gradscope check examples/ci/model.py --baseline examples/ci/gradscope-baseline.json` runs it for
one step on the example input below, probes the training recipe of ``build_optimizer`` and
compares the verdict (trains) and the gradient flow with the baseline committed next to it. Change
the model (try ``ACTIVATION = nn.Sigmoid`` and ``RESIDUAL = False``) and the check fails: the
verdict gets worse and the layers whose signal moved are named.
"""

import torch
import torch.nn as nn

ACTIVATION = nn.ReLU
RESIDUAL = True
WIDTH, DEPTH = 64, 8


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(WIDTH, WIDTH)
        self.act = ACTIVATION()
        nn.init.kaiming_normal_(self.fc.weight, nonlinearity="relu")
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        h = self.act(self.fc(x))
        return x + h if RESIDUAL else h


class DigitsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(64, WIDTH)
        self.blocks = nn.Sequential(*[Block() for _ in range(DEPTH)])
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, 10)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.stem(x))))


def build_model() -> nn.Module:
    return DigitsNet()


def example_input() -> torch.Tensor:
    return torch.randn(32, 64, generator=torch.Generator().manual_seed(0))


def loss_fn(output, inputs):
    labels = torch.arange(output.shape[0]) % 10
    return nn.functional.cross_entropy(output, labels)


def build_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The recipe the model trains with: the verdict (trains, at-risk, fails) is judged under it."""
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
