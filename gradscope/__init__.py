"""gradscope: see gradient flow in any PyTorch model, name the problem, fix it.

Data flows one way: ``hooks`` capture activations and gradients → ``stats`` reduce them on the
device → ``buffer`` ships one step to the host in one copy → ``records`` keep the history →
``rules`` turn records into findings with fixes (``diagnose`` runs the whole chain on example
inputs); ``fixes`` holds the fixes that are code.
"""

from gradscope import fixes
from gradscope.diagnose import ModelError, diagnose
from gradscope.report import Report
from gradscope.errors import GradscopeWarning, UsageError, UsageTypeError
from gradscope.api import Monitor, monitor
from gradscope.rules import RULES, Finding
from gradscope.stats import STATISTICS

__version__ = "0.1.0"

__all__ = [
    "Finding",
    "GradscopeWarning",
    "ModelError",
    "Monitor",
    "RULES",
    "Report",
    "STATISTICS",
    "UsageError",
    "UsageTypeError",
    "__version__",
    "diagnose",
    "fixes",
    "monitor",
]
