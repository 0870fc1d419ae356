"""gradscope: see gradient flow in any PyTorch model, name the problem, fix it.

Data flows one way: ``hooks`` capture activations and gradients → ``stats`` reduce them on the
device → ``buffer`` ships one step to the host in one copy → ``records`` keep the history.
"""

from gradscope.errors import GradscopeWarning, UsageError, UsageTypeError
from gradscope.monitor import Monitor, monitor
from gradscope.stats import STATISTICS

__version__ = "0.1.0"

__all__ = [
    "GradscopeWarning",
    "Monitor",
    "STATISTICS",
    "UsageError",
    "UsageTypeError",
    "__version__",
    "monitor",
]
