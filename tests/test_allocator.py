"""detect.allocator: when `detect` restarts itself with tcmalloc, and that the restart works."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from detect.allocator import (ENV_CHOICE, ENV_TRIED, QUIET, AllocatorError, find_tcmalloc,
                              restart_command)
from detect.entry import needs_allocator

LIB = "/opt/lib/libtcmalloc_minimal.so.4"


def test_restart_env_preloads_the_library_ahead_of_others():
    env = restart_command({"LD_PRELOAD": "/x/libother.so", "PATH": "/bin"}, "system", LIB)
    assert env["LD_PRELOAD"] == f"{LIB} /x/libother.so"
    assert env["PATH"] == "/bin" and env[ENV_TRIED] == LIB
    for key, value in QUIET.items():
        assert env[key] == value


@pytest.mark.parametrize("env, loaded, library", [
    ({ENV_CHOICE: "system"}, "system", LIB),      # asked for the system allocator
    ({}, "tcmalloc", LIB),                        # already running with it
    ({ENV_CHOICE: "auto"}, "system", None),       # none installed: go on quietly
    ({ENV_TRIED: LIB}, "system", LIB),            # restarted once and it did not load: no loop
])
def test_no_restart(env, loaded, library):
    assert restart_command(env, loaded, library) is None


@pytest.mark.parametrize("env, library, message", [
    ({ENV_CHOICE: "jemalloc"}, LIB, "must be one of auto, tcmalloc, system"),
    ({ENV_CHOICE: "tcmalloc"}, None, "apt-get install libtcmalloc-minimal4"),
])
def test_bad_choice_is_an_error(env, library, message):
    with pytest.raises(AllocatorError, match=message):
        restart_command(env, "system", library)


def test_find_tcmalloc_searches_the_given_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "libtcmalloc.so.4").write_bytes(b"")
    assert find_tcmalloc((str(tmp_path / "a"),)) is None
    assert find_tcmalloc((str(tmp_path / "a"), str(tmp_path / "b"))) == str(tmp_path / "b" / "libtcmalloc.so.4")


def _run(choice: str, code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", ENV_TRIED)}
    env[ENV_CHOICE] = choice
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


PROBE = ("from detect.allocator import use_tcmalloc, loaded_allocator; use_tcmalloc(); "
         "import torch; torch.ones(1 << 26).sum(); print(loaded_allocator())")


@pytest.mark.skipif(not sys.platform.startswith("linux") or find_tcmalloc() is None,
                    reason="no tcmalloc on this machine (apt-get install libtcmalloc-minimal4)")
@pytest.mark.parametrize("choice, expected", [("auto", "tcmalloc"), ("tcmalloc", "tcmalloc"), ("system", "system")])
def test_the_process_restarts_with_tcmalloc(choice, expected):
    done = _run(choice, PROBE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [expected]  # printed once: the first process did not go on


def test_the_entry_point_reports_a_bad_choice():
    done = _run("jemalloc", "import sys; sys.argv = ['detect', 'summary']; from detect.entry import main; main()")
    assert done.returncode == 2
    assert "DETECT_ALLOCATOR must be one of" in done.stderr


@pytest.mark.parametrize("args, restarts", [([], False), (["--help"], False), (["run", "-h"], False),
                                            (["--version"], False), (["run", "--image", "a.jpg"], True)])
def test_help_and_version_skip_the_restart(args, restarts):
    assert needs_allocator(args) is restarts
    if not restarts:  # a bad DETECT_ALLOCATOR is not even read
        done = _run("jemalloc", f"import sys; sys.argv = ['detect', *{args!r}]; from detect.entry import main; main()")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("Usage: detect" if args != ["--version"] else "detect 0."), done.stdout
