"""The `detect` console entry: choose the memory allocator first, then run the command.

Kept apart from `detect.cli`, which registers every subcommand: a process restarted with
tcmalloc (`detect.allocator`) should not have imported anything for nothing first. `--help`,
`--version` and a bare `detect` compute nothing, so they skip the restart (a second
interpreter start-up, about 0.1 s).
"""
from __future__ import annotations

import sys

QUICK_FLAGS = ("-h", "--help", "--version")


def needs_allocator(args: list[str]) -> bool:
    """True when `detect ARGS` will run a command (worth restarting with tcmalloc for); False
    for help, the version and a bare `detect`."""
    return bool(args) and not any(a in QUICK_FLAGS for a in args)


def main() -> None:
    """`detect ...` from the shell (also `python -m detect`): restart with tcmalloc where
    DETECT_ALLOCATOR allows and a command will run, then run the click group (`detect.cli.main`)."""
    if needs_allocator(sys.argv[1:]):
        from detect.allocator import AllocatorError, use_tcmalloc

        try:
            use_tcmalloc()
        except AllocatorError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    from detect.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
