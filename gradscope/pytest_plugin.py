"""gradscope's pytest plugin (entry point ``pytest11``): the ``gradient_health`` fixture.

It imports nothing heavy until a test asks for the fixture, so installing gradscope does not slow
down other test suites."""

from __future__ import annotations

import pytest


@pytest.fixture
def gradient_health():
    """``gradscope.testing.assert_healthy``: ``gradient_health(model, inputs, fail_on="warning")``
    fails the test when the model's gradient flow has a finding at that severity or above."""
    from gradscope.testing import assert_healthy

    return assert_healthy
