"""A caching memory allocator (tcmalloc) for the `detect` command on Linux, when the machine has one.

A GoogLeNet forward or training step allocates and frees activations of tens to hundreds of
MB. glibc's malloc hands every block above its mmap threshold (at most 32 MB) back to the
kernel when it is freed, so the next batch page-faults and zeroes the same memory again:
on this project's 2-core machine a full-width float32 training step spent 0.76 of its 1.88 s
in the kernel (525,000 page faults). tcmalloc keeps freed memory for reuse: the same step took
1.46 s, a full-width bfloat16 forward of 16 crops 99 ms against 144 ms
(`python tools/bench/allocator.py` measures both allocators in one run; docs/performance.md).

A process cannot change its allocator once it has started, so `detect` (the console entry,
`detect.entry`) starts itself again with tcmalloc preloaded (LD_PRELOAD) before it imports
torch. Every process it starts (loader workers, proposal workers) inherits the preload.
Python users of the library get it by starting Python the same way:

    LD_PRELOAD=$(python -c "from detect.allocator import find_tcmalloc; print(find_tcmalloc())") python my_script.py

DETECT_ALLOCATOR chooses: "auto" (default: tcmalloc where found, else the system's), "tcmalloc"
(an error where none is found) or "system". tcmalloc comes from the Debian/Ubuntu package
libtcmalloc-minimal4 (`apt-get install libtcmalloc-minimal4`) or gperftools elsewhere. This
module imports nothing heavy: it runs before torch is loaded.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_CHOICE = "DETECT_ALLOCATOR"
ENV_TRIED = "DETECT_ALLOCATOR_PRELOADED"  # set in the restarted process: never restart twice
CHOICES = ("auto", "tcmalloc", "system")
LIBRARY_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so")
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                "/usr/local/lib", "/lib/x86_64-linux-gnu", "/lib64")
# tcmalloc prints a line for every allocation above 1 GB unless told otherwise; full-width
# batches of 224 px activations pass that.
QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}


class AllocatorError(RuntimeError):
    """DETECT_ALLOCATOR names an unknown choice, or tcmalloc where none is installed."""


def find_tcmalloc(dirs: tuple[str, ...] = LIBRARY_DIRS) -> str | None:
    """Path of the first tcmalloc shared library found in `dirs`, or None."""
    for folder in dirs:
        for name in LIBRARY_NAMES:
            path = Path(folder) / name
            if path.is_file():
                return str(path)
    return None


def loaded_allocator() -> str:
    """'tcmalloc' when this process has a tcmalloc library mapped, else 'system'."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "tcmalloc" if "libtcmalloc" in maps else "system"


def preload_env(env: dict[str, str], library: str) -> dict[str, str]:
    """A copy of `env` that preloads `library` (ahead of any existing LD_PRELOAD), quiet."""
    out = dict(env)
    existing = out.get("LD_PRELOAD", "")
    out["LD_PRELOAD"] = f"{library} {existing}".strip() if library not in existing.split() else existing
    for key, value in QUIET.items():
        out.setdefault(key, value)
    out[ENV_TRIED] = library
    return out


def restart_command(env: dict[str, str], loaded: str, library: str | None) -> dict[str, str] | None:
    """The environment to restart this process with, or None to go on as it is.

    env: the current environment (DETECT_ALLOCATOR read from it); loaded: `loaded_allocator()`;
    library: `find_tcmalloc()`. Raises AllocatorError on a bad choice or a missing library that
    was asked for by name."""
    choice = env.get(ENV_CHOICE, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise AllocatorError(f"{ENV_CHOICE} must be one of {', '.join(CHOICES)}, got '{env[ENV_CHOICE]}'")
    if choice == "system" or loaded == "tcmalloc":
        return None
    if library is None:
        if choice == "tcmalloc":
            raise AllocatorError(f"{ENV_CHOICE}=tcmalloc but no tcmalloc library was found in "
                                 f"{', '.join(LIBRARY_DIRS)}; install it (Debian/Ubuntu: apt-get install "
                                 f"libtcmalloc-minimal4) or set {ENV_CHOICE}=system")
        return None
    if env.get(ENV_TRIED):  # restarted once already and the preload did not take: go on without
        return None
    return preload_env(env, library)


def use_tcmalloc(argv: list[str] | None = None) -> None:
    """Restart this process with tcmalloc preloaded when DETECT_ALLOCATOR allows it and the
    machine has it; return when it is already loaded, not wanted or not available (Linux only).
    argv: the full command line to run again (default: `sys.orig_argv`)."""
    if not sys.platform.startswith("linux") or not sys.executable:
        return
    env = restart_command(dict(os.environ), loaded_allocator(), find_tcmalloc())
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, list(argv or sys.orig_argv), env)
    except OSError:  # cannot restart (a sandbox, an odd interpreter): the system allocator it is
        return
