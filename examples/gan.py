"""Two models trained in turn: a DCGAN-style generator and discriminator on scikit-learn's 8x8
digits, each with its own optimizer and its own gradscope monitor and run directory.

The generator's step runs the discriminator (its loss is backpropagated through it). That pass is
not part of the discriminator's training step, so it runs inside ``mon_d.paused()``: the
discriminator's records hold its own two loss passes only, and the generator's records hold the
signal that reached it through the discriminator.

An adversarial loss is no measure of progress: each player's loss falls while it wins and climbs
back as the other catches up, to the equilibrium (2 ln 2 = 1.386 for the discriminator's). The
monitors' loss-rising alarm, which reads a climb of the loss as a run being lost, is therefore off
(``gradscope.Detector(trend=0)``); spikes and non-finite values are still caught.

Run: python examples/gan.py [--steps 300] [--out runs/gan]
Then: gradscope summary runs/gan/discriminator; gradscope summary runs/gan/generator
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn
from sklearn.datasets import load_digits

import gradscope

NZ = 16
"""Size of the generator's noise input."""


def generator() -> nn.Module:
    return nn.Sequential(
        nn.ConvTranspose2d(NZ, 32, 4, 1, 0, bias=False), nn.BatchNorm2d(32), nn.ReLU(True),  # 4x4
        nn.ConvTranspose2d(32, 1, 4, 2, 1, bias=False), nn.Tanh(),  # 8x8
    )


def discriminator() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),  # 4x4
        nn.Conv2d(32, 1, 4, 1, 0, bias=False), nn.Flatten(), nn.Sigmoid(),
    )


def main(argv: list[str] | None = None) -> dict[str, gradscope.Monitor]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("runs/gan"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    images = torch.tensor(load_digits().data, dtype=torch.float32).view(-1, 1, 8, 8) / 8.0 - 1.0
    netG, netD = generator(), discriminator()
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCELoss()
    batch = 64
    real_label, fake_label = torch.ones(batch, 1), torch.zeros(batch, 1)
    adversarial = gradscope.Detector(trend=0)  # the losses climb back to equilibrium by design
    mon_g = gradscope.monitor(netG, every=5, optimizer=optG, log_dir=args.out / "generator", detect=adversarial)
    mon_d = gradscope.monitor(netD, every=5, optimizer=optD, log_dir=args.out / "discriminator",
                              detect=adversarial)
    with mon_g, mon_d:
        for _ in range(args.steps):
            real = images[torch.randint(0, len(images), (batch,))]
            # (1) the discriminator's step: real images as real, generated ones as fake
            netD.zero_grad()
            bce(netD(real), real_label).backward()
            fake = netG(torch.randn(batch, NZ, 1, 1))
            bce(netD(fake.detach()), fake_label).backward()
            optD.step()
            # (2) the generator's step, through the discriminator; that pass is not D's step
            netG.zero_grad()
            with mon_d.paused():
                judged = netD(fake)
            bce(judged, real_label).backward()
            optG.step()
    monitors = {"discriminator": mon_d, "generator": mon_g}
    for name, mon in monitors.items():
        findings = mon.findings()
        print(f"{name}: {mon.history.steps_logged} logged steps, {len(findings)} findings "
              f"({args.out / name})")
        for f in findings:
            print(" ", f.code, f.rule, f.severity, "-", f.message)
    return monitors


if __name__ == "__main__":
    main()
