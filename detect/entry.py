"""The `detect` console entry: choose the memory allocator first, then run the command.

Kept apart from `detect.cli`, which imports torch: a process restarted with tcmalloc
(`detect.allocator`) should not have loaded torch for nothing first.
"""
from __future__ import annotations

import sys


def main() -> None:
    """`detect ...` from the shell: restart with tcmalloc where DETECT_ALLOCATOR allows, then
    run the click group (`detect.cli.main`)."""
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
