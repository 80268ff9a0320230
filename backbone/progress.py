"""Progress of a long loop: a tqdm bar on a terminal, plain periodic lines anywhere else.

tqdm redraws its bar with carriage returns; written to a log file or a CI console that turns
into one line of hundreds of frames. So `progress(...)` gives a tqdm bar only when its stream
(stderr) is a terminal, and otherwise a `PlainProgress`: one line every `every` seconds
(`detect 120/2000 image, 1.6 image/s, 75 s`) and one at the end. Both take the part of the
tqdm interface the project uses: iteration, `update`, `set_postfix`, `close`, `with`.
Messages printed while a loop runs go through `write`, which keeps a bar intact.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO

EVERY_S = 30.0  # seconds between two plain progress lines


def on_terminal(stream: TextIO | None = None) -> bool:
    """True when `stream` (default stderr, where the bar goes) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced by something without isatty
        return False


class PlainProgress:
    """tqdm's counting without the bar: a line each `every` seconds and a last one on close.

    leave False: no last line (tqdm's bar that vanishes: the caller prints its own summary);
    clock: seconds (time.monotonic), replaceable in tests; stream: where lines go (stderr)."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", disable: bool = False, leave: bool = True, every: float = EVERY_S,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic, **_: Any):
        self.iterable, self.desc, self.unit, self.disable, self.every = iterable, desc, unit, disable, every
        self.leave = leave
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.postfix = total, 0, ""
        self.stream, self.clock = stream, clock
        self.start = self.last = clock()
        self.closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if not self.disable and now - self.last >= self.every:
            self._line(now)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def close(self) -> None:
        if not self.closed and not self.disable and self.leave and self.n:
            self._line(self.clock())
        self.closed = True

    def _line(self, now: float) -> None:
        self.last = now
        seconds = now - self.start
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        rate = f", {self.n / seconds:.3g} {self.unit}/s" if seconds > 0 else ""
        extra = f", {self.postfix}" if self.postfix else ""
        head = f"{self.desc} " if self.desc else ""
        print(f"{head}{count} {self.unit}{rate}, {seconds:.0f} s{extra}",
              file=self.stream or sys.stderr, flush=True)


def progress(iterable: Iterable | None = None, **options: Any):
    """A tqdm bar over `iterable` on a terminal, else a `PlainProgress` (same options: total,
    desc, unit, disable, leave, position, ...)."""
    if on_terminal(options.get("file")):
        from tqdm import tqdm

        options.pop("every", None)
        return tqdm(iterable, **options)
    options.pop("file", None)
    for name in ("position", "dynamic_ncols", "mininterval", "smoothing", "ncols"):
        options.pop(name, None)
    return PlainProgress(iterable, **options)


def write(message: str, stream: TextIO | None = None) -> None:
    """Print a line while a loop runs: above the bar on a terminal, a plain line elsewhere."""
    if on_terminal(sys.stderr):
        from tqdm import tqdm

        tqdm.write(message, file=stream)
    else:
        print(message, file=stream or sys.stdout, flush=True)
