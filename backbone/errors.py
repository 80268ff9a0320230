"""The one error type for bad input a person can fix.

Every reader of user-supplied files (images, annotations, configs, weights) raises
`InputError` with a message that names the file and the problem. The `detect` CLI prints
the message without a traceback and exits with status 2.
"""
from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input: an unreadable image, a malformed annotation, an unknown config key, ..."""

    def __init__(self, path: str | Path | None, problem: str | None = None):
        if problem is None:
            # Only torch's DataLoader calls it so: it re-raises a worker's exception as
            # type(formatted traceback). Keep the original one-line message, not the traceback.
            lines = [ln for ln in str(path).splitlines() if ln.strip()]
            path, problem = None, (lines[-1].split("InputError: ", 1)[-1] if lines else "")
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")
