"""Running the `detect` console entry point inside a test (importable from every tests/ folder:
tests/conftest.py puts this folder on sys.path)."""
from __future__ import annotations

import pytest

from detect.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `detect ARGV` as the console script does; return (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err
