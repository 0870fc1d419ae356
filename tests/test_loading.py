"""The training recipe of a model file: ``build_optimizer(model)`` or the command line's options,
and the default when neither is given."""

from __future__ import annotations

import textwrap

import pytest
import torch

from gradscope.errors import UsageError
from gradscope.loading import OPTIMIZERS, RecipeOptions, choose_optimizer, load
from gradscope.reporters.verdict import FROM_DEFAULT, FROM_FILE, FROM_OPTIONS, FROM_OPTIONS_OVER_FILE

MODEL = """
    import torch
    import torch.nn as nn

    def build_model():
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
"""


def loaded(tmp_path, build_optimizer: str = ""):
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(MODEL) + textwrap.dedent(build_optimizer), encoding="utf-8")
    return load(path)


def test_build_optimizer_gives_the_recipe(tmp_path):
    model_file = loaded(tmp_path, """
        def build_optimizer(model):
            return torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.05)
    """)
    optimizer, source = choose_optimizer(model_file, model_file.model, RecipeOptions())
    assert source == FROM_FILE and type(optimizer) is torch.optim.AdamW
    assert optimizer.param_groups[0]["lr"] == 3e-4 and optimizer.param_groups[0]["weight_decay"] == 0.05
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {id(p) for p in model_file.model.parameters()}


def test_without_build_optimizer_or_options_the_default_is_left_to_diagnose(tmp_path):
    model_file = loaded(tmp_path)
    assert model_file.make_optimizer is None
    assert choose_optimizer(model_file, model_file.model, RecipeOptions()) == (None, FROM_DEFAULT)


def test_options_override_build_optimizer_which_is_not_called(tmp_path):
    model_file = loaded(tmp_path, """
        def build_optimizer(model):
            raise AssertionError("called")
    """)
    optimizer, source = choose_optimizer(model_file, model_file.model, RecipeOptions(lr=0.5))
    assert source == FROM_OPTIONS_OVER_FILE and type(optimizer) is torch.optim.SGD
    assert optimizer.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("body, expected", [
    ("return None", r"model.py: build_optimizer\(model\) returned NoneType; it must return a torch.optim.Optimizer "
                    r"over the parameters of the model it is given, e.g. `return torch.optim.AdamW"),
    ("return [torch.optim.SGD(model.parameters(), lr=0.1)]", r"build_optimizer\(model\) returned list; it must return"),
    ("return torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)",
     r"build_optimizer\(model\) returned a SGD, but 2 of its 2 tensors are not parameters of the model it is given; "
     r"build it from that model's parameters"),
    ("return torch.optim.SGD([torch.zeros(1, requires_grad=True), *model.parameters()], lr=0.1)",
     r"returned a SGD, but 1 of its 5 tensors are not parameters of the model"),
    ("raise ValueError('no lr')", r"model.py: build_optimizer\(model\) raised ValueError: no lr \(line 9: raise ValueError"),
])
def test_a_build_optimizer_that_gives_no_optimizer_for_the_model_is_a_usage_error(tmp_path, body, expected):
    model_file = loaded(tmp_path, f"""
        def build_optimizer(model):
            {body}
    """)
    with pytest.raises(UsageError, match=expected):
        choose_optimizer(model_file, model_file.model, RecipeOptions())


def test_a_build_optimizer_taking_no_model_says_so(tmp_path):
    model_file = loaded(tmp_path, """
        def build_optimizer():
            return None
    """)
    with pytest.raises(UsageError, match=r"build_optimizer\(model\) raised TypeError: build_optimizer\(\) takes 0 "
                                         r"positional arguments but 1 was given"):
        choose_optimizer(model_file, model_file.model, RecipeOptions())


def test_a_build_optimizer_that_is_not_a_function_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=r"model.py: `build_optimizer` must be a function build_optimizer\(model\) "
                                         r"that returns a torch.optim.Optimizer, got float"):
        loaded(tmp_path, "build_optimizer = 0.1\n")


@pytest.mark.parametrize("options, kind, lr, momentum, weight_decay", [
    (RecipeOptions(optimizer="sgd"), torch.optim.SGD, 0.01, 0.9, 0.0),
    (RecipeOptions(optimizer="adam"), torch.optim.Adam, 1e-3, 0.9, 0.0),
    (RecipeOptions(optimizer="adamw"), torch.optim.AdamW, 1e-3, 0.9, 0.01),
    (RecipeOptions(lr=0.2, momentum=0.5, weight_decay=1e-4), torch.optim.SGD, 0.2, 0.5, 1e-4),
    (RecipeOptions(optimizer="adam", lr=0.01, momentum=0.8), torch.optim.Adam, 0.01, 0.8, 0.0),
])
def test_options_build_the_optimizer_with_defaults_for_what_is_not_given(tmp_path, options, kind, lr, momentum,
                                                                         weight_decay):
    model_file = loaded(tmp_path)
    optimizer, source = choose_optimizer(model_file, model_file.model, options)
    group = optimizer.param_groups[0]
    assert source == FROM_OPTIONS and type(optimizer) is kind
    assert group["lr"] == lr and group["weight_decay"] == weight_decay
    assert (group["momentum"] if kind is torch.optim.SGD else group["betas"][0]) == momentum


def test_an_unknown_optimizer_name_is_a_usage_error():
    with pytest.raises(UsageError, match=r"--optimizer 'lion' is not one of sgd, adam, adamw"):
        RecipeOptions(optimizer="lion")


def test_the_cli_offers_the_optimizers_loading_builds():
    from gradscope.cli import OptimizerName

    assert [name.value for name in OptimizerName] == list(OPTIMIZERS)
