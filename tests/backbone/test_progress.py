"""backbone.progress: a bar only on a terminal; plain lines at intervals anywhere else."""
from __future__ import annotations

import io

from backbone.progress import PlainProgress, on_terminal, progress


class Clock:
    """A clock that advances `step` seconds each time it is read."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_plain_lines_come_at_the_interval_and_at_the_end():
    out = io.StringIO()
    # the clock moves 4 s per read: 4 s at the start, then one read per update (8, 12, ...)
    items = list(PlainProgress(range(10), desc="detect", unit="image", every=10, stream=out, clock=Clock(4)))
    assert items == list(range(10))
    lines = out.getvalue().splitlines()
    # a line once 10 s have passed since the last: at 16 s (3 done), 28 s (6), 40 s (9), and at close
    assert [line.split(" image")[0] for line in lines] == ["detect 3/10", "detect 6/10", "detect 9/10",
                                                           "detect 10/10"]
    assert "\r" not in out.getvalue()
    assert lines[0] == "detect 3/10 image, 0.25 image/s, 12 s"  # 3 images in 16 - 4 = 12 s


def test_update_counts_and_postfix_is_shown():
    out = io.StringIO()
    bar = PlainProgress(total=5, desc="train", unit="batch", every=1e9, stream=out, clock=Clock(1))
    bar.update(2)
    bar.set_postfix(loss=0.12345)
    bar.update(3)
    bar.close()
    bar.close()  # a second close writes nothing
    # clock reads: 1 (start), 2, 3 (updates), 4 (close): 5 batches in 3 s
    assert out.getvalue().splitlines() == ["train 5/5 batch, 1.67 batch/s, 3 s, loss=0.1235"]


def test_disabled_or_empty_writes_nothing():
    out = io.StringIO()
    list(PlainProgress(range(3), every=0, stream=out, disable=True))
    list(PlainProgress([], every=0, stream=out))
    assert out.getvalue() == ""


def test_leave_false_keeps_the_periodic_lines_only():
    out = io.StringIO()
    list(PlainProgress(range(4), desc="epoch 1", every=2, leave=False, stream=out, clock=Clock(1)))
    # reads: 1 (start), 2, 3 (line: 2 s), 4, 5 (line: 2 s); no last line on close
    assert [line.split(" it")[0] for line in out.getvalue().splitlines()] == ["epoch 1 2/4", "epoch 1 4/4"]


def test_a_file_is_not_a_terminal(tmp_path):
    with open(tmp_path / "log", "w") as f:
        assert not on_terminal(f)
        assert isinstance(progress(range(3), file=f, leave=False, position=1), PlainProgress)
