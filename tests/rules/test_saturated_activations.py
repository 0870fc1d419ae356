"""saturated-activations: hidden bounded activations warn; the model's output activation (a
confident classifier's sigmoid) is information."""

from __future__ import annotations

from gradscope.rules import find_rule
from tests.rules.records import make_records

check = find_rule("saturated-activations").check
TYPES = {"0": "Linear", "1": "Tanh", "2": "Linear", "3": "Sigmoid"}


def saturation(hidden: float, output: float, output_at_first_step: float = 0.0):
    """Two logged steps: the first (near initialisation), then the one judged."""
    return check(make_records({(0, "1", "saturation"): hidden, (0, "3", "saturation"): output_at_first_step,
                               (1, "1", "saturation"): hidden, (1, "3", "saturation"): output}, TYPES))


def test_a_saturated_output_sigmoid_is_information_not_a_warning():
    [finding] = saturation(0.02, 0.83)
    assert finding.severity == "info" and finding.layers == ["3"] and finding.evidence["output"]
    assert "BCEWithLogitsLoss" in finding.fix


def test_an_output_activation_saturated_from_the_first_step_warns():
    """Saturated at initialisation (a generator's tanh on wide weights): the init's doing."""
    [finding] = saturation(0.02, 0.9, output_at_first_step=0.9)
    assert finding.severity == "warning" and finding.layers == ["3"]


def test_a_saturated_hidden_activation_still_warns_and_the_output_is_left_out():
    [finding] = saturation(0.6, 0.83)
    assert finding.severity == "warning" and finding.layers == ["1"]
