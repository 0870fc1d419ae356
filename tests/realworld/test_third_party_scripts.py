"""Third-party model files diagnosed as they are, with no wrapper file: small re-implementations of
pytorch/examples' DCGAN and VAE ``main.py`` (argparse at import, training under ``__main__``),
nanoGPT's ``GPT(config)``, a transformer that registers its attention before its embedding, and
ViTs whose class token and position embedding are parameters of the model itself."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradscope.cli import app

ENV = {"COLUMNS": "100", "NO_COLOR": "1", "GITHUB_ACTIONS": "", "GITHUB_STEP_SUMMARY": ""}
FAST = ("--probe-steps", "2", "--fail-on", "error")
"""A short recipe probe (these tests are about loading) and exit 1 on any error finding."""

DCGAN_MAIN = """
    import argparse
    import os

    import torch
    import torch.nn as nn

    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", required=True, help="cifar10 | lsun | mnist | fake")
    parser.add_argument("--nz", type=int, default=100, help="size of the latent z vector")
    parser.add_argument("--ngf", type=int, default=8)
    parser.add_argument("--niter", type=int, default=25, help="number of epochs to train for")
    opt = parser.parse_args()
    nz, ngf, nc = opt.nz, opt.ngf, 3


    def weights_init(m):
        classname = m.__class__.__name__
        if classname.find("Conv") != -1:
            torch.nn.init.normal_(m.weight, 0.0, 0.02)
        elif classname.find("BatchNorm") != -1:
            torch.nn.init.normal_(m.weight, 1.0, 0.02)
            torch.nn.init.zeros_(m.bias)


    class Generator(nn.Module):
        def __init__(self):
            super().__init__()
            self.main = nn.Sequential(
                nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
                nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
                nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
                nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh(),
            )

        def forward(self, input):
            return self.main(input)


    netG = Generator()
    netG.apply(weights_init)
    criterion = nn.BCELoss()

    if __name__ == "__main__":
        optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
        for epoch in range(opt.niter):
            fake = netG(torch.randn(64, nz, 1, 1))
            fake.mean().backward()
            optimizerG.step()
            torch.save(netG.state_dict(), os.path.join(os.path.dirname(__file__), f"netG_epoch_{epoch}.pth"))
"""

VAE_MAIN = """
    import argparse
    import os

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    parser = argparse.ArgumentParser(description="VAE MNIST Example")
    parser.add_argument("--batch-size", type=int, default=128, metavar="N")
    parser.add_argument("--epochs", type=int, default=10, metavar="N")
    parser.add_argument("--seed", type=int, default=1, metavar="S")
    args = parser.parse_args()
    torch.manual_seed(args.seed)


    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(784, 400)
            self.fc21 = nn.Linear(400, 20)
            self.fc22 = nn.Linear(400, 20)
            self.fc3 = nn.Linear(20, 400)
            self.fc4 = nn.Linear(400, 784)

        def encode(self, x):
            h1 = F.relu(self.fc1(x))
            return self.fc21(h1), self.fc22(h1)

        def reparameterize(self, mu, logvar):
            std = torch.exp(0.5 * logvar)
            return mu + torch.randn_like(std) * std

        def decode(self, z):
            return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

        def forward(self, x):
            mu, logvar = self.encode(x.view(-1, 784))
            return self.decode(self.reparameterize(mu, logvar)), mu, logvar


    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    if __name__ == "__main__":
        for epoch in range(1, args.epochs + 1):
            recon, mu, logvar = model(torch.rand(args.batch_size, 1, 28, 28))
            recon.mean().backward()
            optimizer.step()
            torch.save(model.state_dict(), os.path.join(os.path.dirname(__file__), f"vae_{epoch}.pth"))
"""

NANOGPT = """
    import math
    from dataclasses import dataclass

    import torch
    import torch.nn as nn
    from torch.nn import functional as F


    class LayerNorm(nn.Module):
        def __init__(self, ndim, bias):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(ndim))
            self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

        def forward(self, input):
            return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


    class CausalSelfAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            assert config.n_embd % config.n_head == 0
            self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
            self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
            self.n_head, self.n_embd = config.n_head, config.n_embd

        def forward(self, x):
            B, T, C = x.size()
            q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
            q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


    class MLP(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
            self.gelu = nn.GELU()
            self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

        def forward(self, x):
            return self.c_proj(self.gelu(self.c_fc(x)))


    class Block(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
            self.attn = CausalSelfAttention(config)
            self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
            self.mlp = MLP(config)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))


    @dataclass
    class GPTConfig:
        block_size: int = 1024
        vocab_size: int = 50304
        n_layer: int = 12
        n_head: int = 12
        n_embd: int = 768
        bias: bool = True


    class GPT(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            ))
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
            self.transformer.wte.weight = self.lm_head.weight  # weight tying
            self.apply(self._init_weights)
            for pn, p in self.named_parameters():
                if pn.endswith("c_proj.weight"):
                    torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

        def _init_weights(self, module):
            if isinstance(module, (nn.Linear, nn.Embedding)):
                torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                torch.nn.init.zeros_(module.bias)

        def forward(self, idx, targets=None):
            b, t = idx.size()
            assert t <= self.config.block_size, f"Cannot forward sequence of length {t}, block size is only {self.config.block_size}"
            pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
            x = self.transformer.wte(idx) + self.transformer.wpe(pos)
            for block in self.transformer.h:
                x = block(x)
            x = self.transformer.ln_f(x)
            if targets is not None:
                logits = self.lm_head(x)
                return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
            return self.lm_head(x[:, [-1], :]), None  # inference: the last position only
"""
SMALL_GPT = "GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=128, block_size=64))"

ATTENTION_FIRST = """
    import torch.nn as nn


    class TinyLM(nn.Module):
        def __init__(self, vocab=100, dim=32):
            super().__init__()
            self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)  # registered before the embedding
            self.embed = nn.Embedding(vocab, dim)
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, vocab)

        def forward(self, ids):
            x = self.embed(ids)
            x = self.norm(x + self.attn(x, x, x, need_weights=False)[0])
            return self.head(x)


    def build_model():
        return TinyLM()
"""

VIT = """
    import torch
    import torch.nn as nn


    class ViT(nn.Module):
        def __init__(self, image_size=32, patch_size=8, dim=32, depth=2, heads=4, mlp_dim=64, num_classes=10):
            super().__init__()
            num_patches = (image_size // patch_size) ** 2
            self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)  # parameters of the model itself
            self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)
            self.to_patch_embedding = nn.Conv2d(3, dim, patch_size, stride=patch_size)
            layer = nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout=0.0, batch_first=True, norm_first=True)
            self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

        def forward(self, img):
            x = self.to_patch_embedding(img).flatten(2).transpose(1, 2)
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embedding
            return self.mlp_head(self.transformer(x)[:, 0])


    model = ViT()
"""

VIT_PATCHES = """
    import torch
    import torch.nn as nn


    class Patches(nn.Module):
        # einops' Rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)'): no parameter tells the image size
        def __init__(self, patch):
            super().__init__()
            self.patch = patch

        def forward(self, img):
            b, c, h, w = img.shape
            p = self.patch
            x = img.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
            return x.reshape(b, (h // p) * (w // p), p * p * c)


    class ViT(nn.Module):
        def __init__(self, *, image_size, patch_size, num_classes, dim, depth, heads, mlp_dim, channels=3):
            super().__init__()
            num_patches = (image_size // patch_size) ** 2
            patch_dim = channels * patch_size * patch_size
            self.to_patch_embedding = nn.Sequential(
                Patches(patch_size), nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim), nn.LayerNorm(dim))
            self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
            self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim))
            layer = nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout=0.0, batch_first=True, norm_first=True)
            self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            self.mlp_head = nn.Linear(dim, num_classes)

        def forward(self, img):
            x = self.to_patch_embedding(img)
            b, n, _ = x.shape
            x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1) + self.pos_embedding[:, :(n + 1)]
            return self.mlp_head(self.transformer(x)[:, 0])
"""
SMALL_VIT = "ViT(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64)"


def write(directory: Path, source: str, name: str = "main.py") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def said(result) -> str:
    """The output with line breaks and padding folded into single spaces."""
    return " ".join(result.output.split())


def assert_usage_error(result, *parts: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for part in parts:
        assert part in said(result), result.output


def test_an_argparse_script_gets_the_arguments_after_double_dash_and_its_training_does_not_run(tmp_path, monkeypatch):
    script = write(tmp_path, DCGAN_MAIN)
    argv = ["gradscope", "diagnose", str(script), "--factory", "netG", "--", "--dataset", "fake", "--nz", "64"]
    monkeypatch.setattr(sys, "argv", argv)  # what the script would have parsed before
    result = run("diagnose", script, "--factory", "netG", *FAST, "--", "--dataset", "fake", "--nz", "64")
    assert result.exit_code == 0, result.output
    # --nz 64 reached the script: the generator's input has 64 channels
    assert ("Generator (netG), inputs inferred from layer main.0 (ConvTranspose2d), the first layer the input "
            "reaches: shape (16, 64, 1, 1)") in said(result)
    assert sys.argv == argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["main.py"]  # no checkpoint: no training ran


def test_an_argparse_script_without_its_arguments_says_what_it_got_and_how_to_pass_them(tmp_path, monkeypatch):
    script = write(tmp_path, DCGAN_MAIN)
    argv = ["gradscope", "diagnose", str(script)]
    monkeypatch.setattr(sys, "argv", argv)
    result = run("diagnose", script, "--factory", "netG")
    assert_usage_error(
        result,
        f"{script} exited from its argument parser (argparse) while gradscope was loading it with "
        f"sys.argv = {[str(script)]!r}: main.py: error: the following arguments are required: --dataset.",
        f"Give the script its own arguments after `--` at the end of gradscope's command line, e.g. "
        f"gradscope diagnose {script} -- ARGS.")
    assert sys.argv == argv  # restored after the error too
    wrong = run("diagnose", script, "--factory", "netG", "--", "--dataset", "fake", "--nz", "many")
    assert_usage_error(wrong, f"sys.argv = {[str(script), '--dataset', 'fake', '--nz', 'many']!r}",
                       "main.py: error: argument --nz: invalid int value: 'many'",
                       "Check the arguments after `--`: they reach the script as given.")


def test_a_script_that_parses_its_defaults_runs_without_arguments(tmp_path, monkeypatch):
    """pytorch/examples' VAE: module-level `model`, inputs guessed from fc1 though the forward
    takes a view of them."""
    script = write(tmp_path, VAE_MAIN)
    monkeypatch.setattr(sys, "argv", ["gradscope", "diagnose", str(script)])  # unknown to its parser
    result = run("diagnose", script, *FAST)
    assert result.exit_code == 0, result.output
    assert ("VAE (model), inputs inferred from layer fc1 (Linear), the first layer the input reaches: "
            "shape (16, 784)") in said(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["main.py"]


def test_a_script_that_exits_on_its_own_command_line_is_told_how_to_get_arguments(tmp_path):
    script = write(tmp_path, """
        import sys
        import torch.nn as nn

        if len(sys.argv) < 2:
            sys.exit("usage: train.py WIDTH")
        model = nn.Sequential(nn.Linear(8, int(sys.argv[1])), nn.ReLU(), nn.Linear(int(sys.argv[1]), 2))
    """)
    result = run("diagnose", script)
    assert_usage_error(result, f"{script} called sys.exit('usage: train.py WIDTH') (line 6",
                       f"It was loaded with sys.argv = {[str(script)]!r}; give it arguments after `--`")
    ran = run("diagnose", script, *FAST, "--", "16")
    assert ran.exit_code == 0, ran.output
    assert "inputs inferred from layer 0 (Linear)" in said(ran)


def test_a_config_constructor_is_built_by_a_factory_expression(tmp_path):
    script = write(tmp_path, NANOGPT, "model.py")
    result = run("diagnose", script, "--factory", SMALL_GPT, *FAST, "--json", tmp_path / "report.json")
    assert result.exit_code == 0, result.output
    assert ("inputs inferred from layer transformer.wte (Embedding), the first layer the input reaches: token "
            "ids of shape (16, 32), also passed as targets so that the model computes its own loss") in said(result)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["model"]["class"] == "GPT" and report["model"]["factory"] == SMALL_GPT
    assert report["options"]["loss"] == "output[1]"  # nanoGPT's (logits, loss), not the default loss


def test_a_config_constructor_without_a_factory_names_the_classes_and_the_expression(tmp_path):
    script = write(tmp_path, NANOGPT, "model.py")
    assert_usage_error(run("diagnose", script), f"No model found in {script}",
                       "It defines the nn.Module classes LayerNorm, CausalSelfAttention, MLP, Block, GPT: "
                       '--factory "GPT(...)" builds one')
    assert_usage_error(run("diagnose", script, "--factory", "GPT"),
                       f"{script}: GPT() raised TypeError: GPT.__init__() missing 1 required positional argument: "
                       "'config'. GPT takes config: pass it in an expression evaluated in the file, "
                       '--factory "GPT(config=...)"')


@pytest.mark.parametrize("expression, expected", [
    ("GPT(GPTConfig(n_head=5))", "--factory 'GPT(GPTConfig(n_head=5))', evaluated in {script}, raised "
                                 "AssertionError (line 23: assert config.n_embd % config.n_head == 0)."),
    ("GPT(GPTConfig(n_layers=2))", "--factory 'GPT(GPTConfig(n_layers=2))', evaluated in {script}, raised "
                                   "TypeError: GPTConfig.__init__() got an unexpected keyword argument 'n_layers'."),
    ("GPT(GPTConfig(n_layer=2)", "--factory 'GPT(GPTConfig(n_layer=2)' is neither a name nor a Python expression "
                                 "('(' was never closed)"),
    ("GPTConfig()", "{script}: `GPTConfig()` is a GPTConfig, not a function or an nn.Module."),
])
def test_a_factory_expression_that_fails_is_named_with_the_error(tmp_path, expression, expected):
    script = write(tmp_path, NANOGPT, "model.py")
    assert_usage_error(run("diagnose", script, "--factory", expression), expected.format(script=script))


def test_a_dataclass_config_under_postponed_annotations_loads(tmp_path):
    """@dataclass looks its module up in sys.modules when annotations are strings."""
    script = write(tmp_path, """
        from __future__ import annotations

        from dataclasses import dataclass

        import torch.nn as nn


        @dataclass
        class Config:
            width: int = 16


        class Net(nn.Sequential):
            def __init__(self, config: Config):
                super().__init__(nn.Linear(8, config.width), nn.ReLU(), nn.Linear(config.width, 2))
    """, "model.py")
    result = run("diagnose", script, "--factory", "Net(Config(width=32))", *FAST)
    assert result.exit_code == 0, result.output


def test_inputs_follow_the_forward_not_the_registration_order(tmp_path):
    result = run("diagnose", write(tmp_path, ATTENTION_FIRST, "model.py"), *FAST)
    assert result.exit_code == 0, result.output
    assert ("inputs inferred from layer embed (Embedding), the first layer the input reaches: token ids of shape "
            "(16, 32) (2 earlier guesses failed)") in said(result)


def test_a_vit_with_parameters_of_its_own_gets_images_for_its_patch_embedding(tmp_path):
    result = run("diagnose", write(tmp_path, VIT, "model.py"), *FAST)
    assert result.exit_code == 0, result.output
    assert ("ViT (model), inputs inferred from layer to_patch_embedding (Conv2d), the first layer the input "
            "reaches: shape (16, 3, 32, 32)") in said(result)


def test_a_vit_whose_image_size_no_parameter_tells_says_what_was_guessed(tmp_path):
    script = write(tmp_path, VIT_PATCHES, "model.py")
    result = run("diagnose", script, "--factory", SMALL_VIT)
    assert_usage_error(
        result,
        f"Cannot infer example inputs for ViT from {script}: the shapes were guessed from its layers and the "
        "model ran on none of them: shape (16, 32, 192) from layer to_patch_embedding.1 (LayerNorm)",
        "failed at layer to_patch_embedding.0 (Patches): ValueError: not enough values to unpack (expected 4, got 3)",
        "Give the input's shape with --input-shape, e.g. --input-shape 16,3,224,224 (with --input-dtype long for "
        "token ids), or add `def example_input():")
    given = run("diagnose", script, "--factory", SMALL_VIT, "--input-shape", "16,3,32,32", *FAST)
    assert given.exit_code == 0, given.output
    assert "inputs --input-shape" in said(given)


def test_a_run_that_fails_on_a_guessed_input_says_it_was_guessed(tmp_path):
    script = write(tmp_path, """
        import torch.nn as nn


        class Classifier(nn.Linear):
            def forward(self, x):
                return super().forward(x).argmax(-1)  # class ids: no loss can be taken of them


        model = Classifier(8, 4)
    """, "model.py")
    assert_usage_error(
        run("diagnose", script),
        "holds no floating-point tensor that requires grad",
        "The input was guessed (inferred from the model itself (Classifier), the first layer the input reaches: "
        "shape (16, 8)); if the model takes another, give its shape with --input-shape (--input-dtype long for "
        "token ids) or define example_input() in the file.")
