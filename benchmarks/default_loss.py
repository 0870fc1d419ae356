"""How well gradscope's default loss stands in for a model's real one.

``diagnose`` without a loss uses ``0.5 ||y - r||² / (P sqrt(K))`` toward a fixed random target
(``gradscope.diagnose``'s docstring). For models whose real loss is known, this runs the recipe
probe under the assumed default recipe (SGD lr 0.01 momentum 0.9) twice, with the real loss and with
the default one, and prints the two curvature/limit ratios and median update ratios side by side,
with the verdicts. Results in docs/benchmarks.md ("The default loss against the real one").

    python benchmarks/default_loss.py
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradscope  # noqa: E402
from tests.realworld.test_dense_outputs import SuperResolution  # noqa: E402
from tests.zoo import ResNet  # noqa: E402


def _cases():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x, y = torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g)
    mlp = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    yield "MLP classifier, cross-entropy", mlp, x, lambda out: F.cross_entropy(out, y)
    torch.manual_seed(0)
    images, labels = torch.randn(32, 3, 16, 16, generator=g), torch.randint(0, 10, (32,), generator=g)
    yield "ResNet (BatchNorm), cross-entropy", ResNet(blocks=6), images, lambda out: F.cross_entropy(out, labels)
    transformers = _transformers()
    for vocab in (256, 8192) if transformers is not None else ():
        torch.manual_seed(0)
        config = transformers.GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=vocab, n_positions=64,
                                         bos_token_id=0, eos_token_id=0)
        ids = torch.randint(0, vocab, (4, 32), generator=g)
        yield (f"GPT-2 (vocabulary {vocab}), next-token cross-entropy", transformers.GPT2LMHeadModel(config),
               {"input_ids": ids}, lambda out, ids=ids, vocab=vocab: F.cross_entropy(
                   out.logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1)))
    torch.manual_seed(0)
    low, high = torch.rand(4, 1, 64, 64, generator=g), torch.rand(4, 1, 192, 192, generator=g)
    yield "super-resolution (pixel shuffle), MSE", SuperResolution(), low, lambda out: F.mse_loss(out, high)


def _transformers():
    try:
        import transformers
    except ImportError:
        return None
    transformers.logging.set_verbosity_error()
    return transformers


def _logits(output):
    return output.logits if hasattr(output, "logits") else output


def main() -> None:
    warnings.simplefilter("ignore")
    print("| model, real loss | loss | curvature / limit | median update ratio | verdict |")
    print("| --- | --- | --- | --- | --- |")
    for name, model, inputs, real in _cases():
        for label, loss_fn in (("real", real), ("default", None)):
            if loss_fn is None and hasattr(model, "config"):  # a ModelOutput: the default loss on its logits
                report = gradscope.diagnose(_LogitsOnly(model), inputs)
            else:
                report = gradscope.diagnose(model, inputs, loss_fn)
            dynamics = report.dynamics
            print(f"| {name} | {label} | {dynamics.stability_ratio:.3g} | {dynamics.median_update_ratio:.3g} | "
                  f"{report.verdict.label} |", flush=True)


class _LogitsOnly(nn.Module):
    """A Hugging Face model seen as returning its logits only, so that the default loss applies."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **kwargs):
        return _logits(self.model(**kwargs, use_cache=False))


if __name__ == "__main__":
    main()
