"""Errors a user causes and can fix (a config, a data file, a checkpoint). main.py prints them as
one line and exits with code 2 instead of a traceback."""


class NemoLLMError(Exception):
    """Base of the errors whose message alone tells the user what to fix."""


class Preempted(NemoLLMError):
    """A stage stopped on SIGTERM/SIGUSR1 after saving what it needs to continue (exit code 75, the
    sysexits "temporary failure": a launcher requeues the job, which continues with resume=auto)."""
