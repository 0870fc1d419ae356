"""The ``gradscope`` command line: a thin front over the same pieces as the Python API."""

from __future__ import annotations

import typer

import gradscope

app = typer.Typer(
    name="gradscope",
    help="gradscope: see, name and fix gradient-flow problems in PyTorch models.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print the versions of gradscope and torch."""
    import torch

    typer.echo(f"gradscope {gradscope.__version__} (torch {torch.__version__})")


@app.callback()
def main() -> None:
    """gradscope: see, name and fix gradient-flow problems in PyTorch models."""
