"""Files the project writes get the mode the umask gives (not mkstemp's 0600)."""
from __future__ import annotations

import os
import stat

import pytest

from backbone.io import atomic_write_json, current_umask


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(mask, mode, tmp_path):
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        atomic_write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == mode
