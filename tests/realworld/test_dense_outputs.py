"""Models with dense or bounded outputs (pytorch/examples' super-resolution net, DCGAN generator and
VAE, re-implemented here) under gradscope's defaults: ``diagnose(model, x, steps=3)`` with the
default loss and the assumed SGD recipe, as ``gradscope diagnose model.py --steps 3`` runs them.
A default must never make a finding: the healthy models get no warning or error, and a deliberately
broken variant of each gets the finding it deserves."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import gradscope


class SuperResolution(nn.Module):
    """pytorch/examples super_resolution: four convolutions and a pixel shuffle, orthogonal init."""

    def __init__(self, upscale: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, 5, padding=2)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 32, 3, padding=1)
        self.conv4 = nn.Conv2d(32, upscale ** 2, 3, padding=1)
        self.shuffle = nn.PixelShuffle(upscale)
        for conv in (self.conv1, self.conv2, self.conv3):
            nn.init.orthogonal_(conv.weight, nn.init.calculate_gain("relu"))
        nn.init.orthogonal_(self.conv4.weight)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.shuffle(self.conv4(x))


def dcgan_generator(batchnorm: bool = True, std: float = 0.02, nz: int = 100, ngf: int = 32) -> nn.Sequential:
    """pytorch/examples dcgan's generator (N, nz, 1, 1) -> (N, 3, 64, 64), with its N(0, 0.02) init."""
    widths = [nz, ngf * 8, ngf * 4, ngf * 2, ngf]
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.ConvTranspose2d(c_in, c_out, 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=False))
        layers += [nn.BatchNorm2d(c_out)] if batchnorm else []
        layers.append(nn.ReLU(True))
    layers += [nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh()]
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, std)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return model


class VAE(nn.Module):
    """pytorch/examples vae: returns (reconstruction through a sigmoid, mu, logvar)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def forward(self, x):
        h = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def _inputs(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _alarms(report) -> list[str]:
    return [f"{f.code} {f.rule} ({f.severity}): {f.message}" for f in report.findings if f.severity != "info"]


def _codes(report, severity: str) -> set[str]:
    return {f.code for f in report.findings if f.severity == severity}


def test_super_resolution_is_healthy_under_the_defaults():
    torch.manual_seed(0)
    report = gradscope.diagnose(SuperResolution(), _inputs(4, 1, 32, 32), steps=3)
    assert report.options["loss"] == "default"
    assert _alarms(report) == [] and report.verdict.label == "trains"


def test_super_resolution_with_unit_variance_weights_fails():
    torch.manual_seed(0)
    model = SuperResolution()
    for conv in (model.conv1, model.conv2, model.conv3, model.conv4):
        nn.init.normal_(conv.weight, 0.0, 1.0)
    report = gradscope.diagnose(model, _inputs(4, 1, 32, 32), steps=3)
    assert {"GS103", "GS107"} & _codes(report, "error") and report.verdict.label == "fails"


def test_dcgan_generator_is_healthy_under_the_defaults():
    torch.manual_seed(0)
    report = gradscope.diagnose(dcgan_generator(), _inputs(16, 100, 1, 1), steps=3)
    assert _alarms(report) == [] and report.verdict.label == "trains"


def test_dcgan_generator_without_batchnorm_and_wide_init_saturates_its_tanh():
    torch.manual_seed(0)
    report = gradscope.diagnose(dcgan_generator(batchnorm=False, std=0.2), _inputs(16, 100, 1, 1), steps=3)
    saturated = [f for f in report.findings if f.rule == "saturated-activations"]
    assert saturated and saturated[0].severity == "warning" and saturated[0].layers == ["9"]


def test_vae_with_its_tuple_output_is_healthy_under_the_defaults():
    torch.manual_seed(0)
    report = gradscope.diagnose(VAE(), _inputs(64, 784), steps=3)
    assert _alarms(report) == [] and report.verdict.label == "trains"


def test_vae_whose_relus_start_dead_is_flagged():
    torch.manual_seed(0)
    model = VAE()
    nn.init.constant_(model.fc1.bias, -3.0)
    nn.init.constant_(model.fc3.bias, -3.0)
    report = gradscope.diagnose(model, _inputs(64, 784), steps=3)
    assert "GS104" in _codes(report, "error")


def test_super_resolution_under_its_own_recipe_trains_and_is_called_so():
    """pytorch/examples' own recipe, Adam lr 0.01 on MSE against the high-resolution image (crops
    of scikit-learn's sample photos): the probe's loss spikes about 45x at its first step and comes
    back 9x below its start. It was called `fails`; it trains."""
    from sklearn.datasets import load_sample_images

    photos = [torch.tensor(im, dtype=torch.float32).permute(2, 0, 1) / 255 for im in load_sample_images().images]
    luma = [(0.299 * im[0] + 0.587 * im[1] + 0.114 * im[2])[None] for im in photos]
    g = torch.Generator().manual_seed(12345)

    def batch(size):
        crops = []
        for _ in range(size):
            im = luma[int(torch.randint(0, 2, (1,), generator=g))]
            i, j = (int(torch.randint(0, n - 96, (1,), generator=g)) for n in im.shape[1:])
            crops.append(im[:, i:i + 96, j:j + 96])
        high = torch.stack(crops)
        return F.interpolate(high, size=(32, 32), mode="bicubic", align_corners=False).clamp(0, 1), high

    torch.manual_seed(0)
    model = SuperResolution()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    low, high = batch(16)
    report = gradscope.diagnose(model, low, loss_fn=lambda out, inp: F.mse_loss(out, high), optimizer=opt)
    losses = report.dynamics.losses
    assert max(losses) > 10 * losses[0] and losses[-1] < 0.6 * losses[0]  # the spike, then back down
    assert _alarms(report) == [] and report.verdict.label == "trains"
    test_low, test_high = batch(32)
    with torch.no_grad():
        before = F.mse_loss(model(test_low), test_high)
    for _ in range(150):  # its own training, judged on crops it has not seen
        x, y = batch(16)
        F.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        bicubic = F.mse_loss(F.interpolate(test_low, size=(96, 96), mode="bicubic", align_corners=False).clamp(0, 1),
                             test_high)
        after = F.mse_loss(model(test_low), test_high)
    assert after < 0.1 * before and after < 1.2 * bicubic  # (300 steps take it past bicubic)
