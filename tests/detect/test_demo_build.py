"""The demo build's machinery (detect/demo_build.py): steps marked done, commands side by side,
the evaluate step's shard join, installing the model."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from detect.demo_build import MAX_MODEL_BYTES, StepRunner, install_default_model, join_shards


def test_installs_only_the_model_files(tmp_path):
    run = tmp_path / "detector"
    (run / "members" / "0").mkdir(parents=True)
    (run / "multibox").mkdir()
    (run / "train").mkdir()
    (run / "detector.json").write_text('{"classes": ["a"], "members": ["members/0"], "multibox": "multibox"}')
    (run / "detector.yaml").write_text("{}\n")
    for f in ("members/0/model.safetensors", "members/0/model.json", "multibox/model.safetensors",
              "multibox/multibox.json", "multibox/checkpoint.pt", "multibox/log.jsonl", "train/member_0.pt"):
        (run / f).write_bytes(b"x" * 10)
    dest = tmp_path / "pkg" / "default_model"
    size = install_default_model(run, dest)
    installed = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert installed == ["detector.json", "detector.yaml", "members/0/model.json",
                         "members/0/model.safetensors", "multibox/model.safetensors", "multibox/multibox.json"]
    assert size == sum((dest / f).stat().st_size for f in installed)
    (run / "members" / "0" / "model.safetensors").write_bytes(b"x" * (MAX_MODEL_BYTES + 1))
    with pytest.raises(SystemExit, match="15 MB"):
        install_default_model(run, dest)
    assert (dest / "detector.json").is_file()  # the previous install is kept


def test_steps_are_marked_done_and_only_runs_them_again(tmp_path):
    build = StepRunner(tmp_path / "work", tmp_path)
    calls = []
    build.step("crops", lambda: calls.append("crops"))
    build.step("crops", lambda: calls.append("crops"))  # done before: skipped
    assert calls == ["crops"] and (tmp_path / "work" / ".done" / "crops").is_file()
    build.step("crops", lambda: calls.append("again"), again=True)  # --only crops
    assert calls == ["crops", "again"]
    build.step("install", lambda: False)  # --no-install: nothing installed, so not marked done
    assert not (tmp_path / "work" / ".done" / "install").exists() and "install" not in build.report["steps"]
    assert "crops" in build.report["steps"]


def test_runs_commands_side_by_side_and_stops_them_on_failure(tmp_path):
    build = StepRunner(tmp_path / "work", tmp_path)
    py = [sys.executable, "-c"]
    build.run_parallel([[*py, "print('one')"], [*py, "print('two')"]], [tmp_path / "b.log"])
    assert (tmp_path / "b.log").read_text().strip() == "two"
    marker = tmp_path / "sleeper.txt"
    sleeper = f"import time, pathlib; p = pathlib.Path({str(marker)!r}); p.write_text('started'); " \
              f"time.sleep(60); p.write_text('finished')"
    failing = "import time, sys; time.sleep(1); sys.exit(3)"
    with pytest.raises(subprocess.CalledProcessError) as err:
        build.run_parallel([[*py, sleeper], [*py, failing]], [tmp_path / "f.log"])
    assert err.value.returncode == 3
    assert marker.read_text() == "started"  # stopped, not waited for


def test_joins_the_shards_of_the_evaluate_step(tmp_path):
    shards = [tmp_path / "shard_0", tmp_path / "shard_1"]
    for i, shard in enumerate(shards):
        shard.mkdir()
        index = {}
        for name in ("ensemble", "member_0"):
            rows = [{"image_id": i + 2 * k, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5} for k in range(2)]
            (shard / f"{name}.detections.json").write_text(json.dumps(rows))
            index[name] = str(shard / f"{name}.detections.json")
        (shard / "detections.json").write_text(json.dumps(index))
    files = join_shards(shards, tmp_path)
    assert sorted(files) == ["ensemble", "member_0"]
    for name, path in files.items():
        assert sorted(r["image_id"] for r in json.loads(path.read_text())) == [0, 1, 2, 3]
    assert json.loads((tmp_path / "detections.json").read_text()) == {k: str(v) for k, v in files.items()}
