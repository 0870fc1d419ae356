"""``python -m gradscope``: the ``gradscope`` command, for an environment whose scripts directory
is not on the PATH."""
from gradscope.cli import run

run()
