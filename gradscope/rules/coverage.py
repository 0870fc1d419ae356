"""What the rules could judge: the evidence rules declare they need on their registry rows (a
:class:`~gradscope.rules.base.Need` each), and the :class:`Coverage` of a set of records, which
says which rules judged them and which could not, and why. Reports carry it, so that a report
without findings says what was checked rather than that all is well.

>>> from gradscope.rules import find_rule
>>> [need.name for need in find_rule("vanishing-gradient").needs]
['depth profile']
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gradscope.rundir import UNWRITTEN
from gradscope.rules.base import Need
from gradscope.rules.profile import MIN_LAYERS, signal_profile

HEALTHY = "No findings: gradient flow looks healthy."
"""What a report without findings says when every rule could judge the model."""

DEPTH_PROFILE = Need("depth profile", lambda records: None if signal_profile(records) is not None else (
    f"fewer than {MIN_LAYERS} layers (dropout and identity layers not counted) carry a backpropagated signal"))
STRUCTURE = Need("model structure", lambda records: None if records.structure is not None else (
    "only gradscope.diagnose records it, a training run's history has none"))
RECIPE_PROBE = Need("recipe probe", lambda records: None if records.dynamics is not None else "none ran")
TRAINING_RUN = Need("training run", lambda records: (
    "not a monitored training run (gradscope.diagnose takes a few probe steps)" if records.pulse is None
    else "the run stopped before writing its every-step pulse (pulse.parquet) and raised no alarm"
    if records.pulse.empty and records.pulse.attrs.get(UNWRITTEN) and not records.events
    else "no step reached the spike detector" if records.pulse.empty and not records.events else None))


@dataclass(frozen=True)
class Coverage:
    """Which rules judged the records (``checked``, registry order) and which could not, with the
    evidence each lacked and why (``not_checked``: slug → ``"depth profile: fewer than 4 …"``)."""

    checked: list[str]
    not_checked: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.not_checked

    def no_findings_text(self) -> str:
        """The line every reporter prints where there is no finding.

        >>> Coverage(["dead-units"], {"vanishing-gradient": "depth profile: too short",
        ...                           "exploding-gradient": "depth profile: too short"}).no_findings_text()
        'No findings. Checked: dead-units; not checked: vanishing-gradient, exploding-gradient (depth profile: too short).'
        """
        if self.complete:
            return HEALTHY
        if not self.checked and len(set(self.not_checked.values())) == 1:
            return f"No findings: nothing could be judged ({next(iter(self.not_checked.values()))})."
        rules_by_reason: dict[str, list[str]] = {}
        for slug, reason in self.not_checked.items():
            rules_by_reason.setdefault(reason, []).append(slug)
        missing = "; ".join(f"{', '.join(slugs)} ({reason})" for reason, slugs in rules_by_reason.items())
        return f"No findings. Checked: {', '.join(self.checked) or 'nothing'}; not checked: {missing}."

    def to_dict(self) -> dict:
        return {"checked": list(self.checked), "not_checked": dict(self.not_checked)}
