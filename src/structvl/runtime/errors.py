"""`RunStopped`: a run ended for a reason its message explains in one line, which is not a bug.

Raised when training cannot go on without harm (non-finite losses or weights, a checkpoint that cannot be
written, no loadable checkpoint to resume from). `structvl` prints the message without a traceback and exits
with code 1 (user mistakes, `ConfigError`, exit with 2). Imports nothing heavy, so the CLI can catch it.
"""

from __future__ import annotations


class RunStopped(RuntimeError):
    """The run stopped; the message says why, what was kept and what to do."""
