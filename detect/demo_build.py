"""The machinery of the demo build (`tools/build_demo.py`, which holds the recipe).

- `StepRunner`: named steps run in order, timed into WORK/build_report.json, marked done in
  WORK/.done/ and skipped when the build is run again; commands run as child processes, one
  at a time or side by side (one failing stops the others).
- `write_member_detections` / `join_shards`: the evaluate step. Each member scores every
  cached region of its shard of the test images once; the ensemble's detections (the mean of
  the members' softmax, exactly `Detector.score_regions`) and each member's are written as
  COCO results files, and the shards' files are joined.
- `install_default_model`: the parts of a detector run that inference needs, copied into the
  package's default model folder (<= 15 MB).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

# `detect ARGS` in a child process, whatever the console scripts' path
DETECT = [sys.executable, "-c", "from detect.entry import main; main()"]
MAX_MODEL_BYTES = 15 * 1024 * 1024


def shown(args: list[str]) -> str:
    """A command as a user would type it: `detect ...`, `python ...`."""
    words = ["detect", *args[3:]] if args[:3] == DETECT else [Path(a).name if a == sys.executable else a
                                                              for a in args]
    return " ".join(words)


class StepRunner:
    """Runs named steps in order in `cwd`, times them and keeps WORK/build_report.json up to date."""

    def __init__(self, work: Path, cwd: Path):
        self.work, self.cwd = work, cwd
        self.report_path = work / "build_report.json"
        self.report = json.loads(self.report_path.read_text()) if self.report_path.is_file() else {}
        self.report.setdefault("steps", {})

    def path(self, name: str) -> str:
        return str(self.work / name)

    def run(self, args: list[str]) -> None:
        print("$ " + shown(args), flush=True)
        subprocess.run(args, cwd=self.cwd, check=True)

    def run_parallel(self, commands: list[list[str]], logs: list[Path]) -> None:
        """Run the commands at once; the first one's output is shown, command i's (i >= 1) goes
        to logs[i - 1]. Fails if any fails, and then stops the others."""
        procs = []
        for args in commands:
            print("$ " + shown(args), flush=True)
            log = None
            if procs:
                log = open(logs[len(procs) - 1], "w")
                print(f"  (its output: {log.name})", flush=True)
            procs.append((subprocess.Popen(args, cwd=self.cwd, stdout=log,
                                           stderr=subprocess.STDOUT if log else None), log))
        failed = None
        try:
            while failed is None and any(proc.poll() is None for proc, _ in procs):
                failed = next((proc for proc, _ in procs if proc.poll() not in (None, 0)), None)
                time.sleep(0 if failed else 1)  # one failed: stop the others rather than wait for them
        finally:
            for proc, log in procs:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()
                if log is not None:
                    log.close()
        failed = failed or next((proc for proc, _ in procs if proc.returncode != 0), None)
        if failed is not None:
            raise subprocess.CalledProcessError(failed.returncode, failed.args)

    def step(self, name: str, action, again: bool = False) -> None:
        """Run one step unless it is marked done (`again`: run it anyway). A step whose action
        returns False did nothing (install under --no-install) and is not marked."""
        marker = self.work / ".done" / name
        if marker.is_file() and not again:
            print(f"== {name}: done before, skipped", flush=True)
            return
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        if action() is False:
            return
        seconds = round(time.perf_counter() - start, 1)
        self.report["steps"][name] = seconds
        self.save_report()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{seconds}\n")
        print(f"== {name}: {seconds:.0f} s", flush=True)

    def save_report(self) -> None:
        self.report["total_seconds"] = round(sum(self.report["steps"].values()), 1)
        self.report_path.parent.mkdir(parents=True, exist_ok=True)
        self.report_path.write_text(json.dumps(self.report, indent=2) + "\n")


def join_shards(shards: list[Path], out_dir: Path) -> dict[str, Path]:
    """Join the COCO results files that `write_member_detections` wrote in each shard folder
    into out_dir/NAME.detections.json (and out_dir/detections.json, the index); returns them."""
    from detect.sharding import join_results

    names = json.loads((shards[0] / "detections.json").read_text())
    files = {}
    for name in names:
        rows = join_results([shard / f"{name}.detections.json" for shard in shards])
        files[name] = out_dir / f"{name}.detections.json"
        files[name].write_text(json.dumps(rows) + "\n")
    (out_dir / "detections.json").write_text(json.dumps({k: str(v) for k, v in files.items()}, indent=2) + "\n")
    return files


def write_member_detections(run: Path, scenes: Path, split: str, cache_dir: Path, out_dir: Path,
                            device: str, overrides: tuple[str, ...] = (),
                            shard: tuple[int, int] = (0, 1)) -> dict[str, Path]:
    """Detections of the ensemble and of each member on `split`, from the cached proposals.

    Each member scores every region once; the ensemble's scores are the mean of the members'
    softmax outputs (exactly `Detector.score_regions`), and every score set goes through the
    same per-class NMS (`select_detections` with the run's inference settings). Returns
    {"ensemble": path, "member_0": path, ...} of COCO results JSON files. `overrides` are
    key=value settings of the run's detector.yaml (e.g. inference.mirror=false). shard (i, n):
    only images i, i + n, ... of the split (`join_shards` joins the n folders).
    """
    from detect.data import load_dataset
    from detect.detector import Detector, select_detections
    from detect.member_scores import member_probs, single_members
    from detect.results import write_detections

    ensemble = Detector.load(run, device=device, overrides=overrides)
    singles = single_members([ensemble])
    dataset = load_dataset(scenes, split)
    inf = ensemble.config.inference
    names = ["ensemble", *(f"member_{i}" for i in range(len(singles)))]
    detections: dict[str, dict] = {name: {} for name in names}
    index, count = shard
    for rec, boxes, probs in member_probs(singles, dataset.images[index::count], cache_dir,
                                          f"score regions ({index + 1}/{count})", position=index):
        for name, p in zip(names, [probs.mean(0), *probs]):
            detections[name][rec.image_id] = select_detections(
                boxes, p, inf.nms_iou, inf.score_threshold, inf.max_detections)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in names:
        files[name] = out_dir / f"{name}.detections.json"
        write_detections(files[name], detections[name], dataset)
    (out_dir / "detections.json").write_text(json.dumps({k: str(v) for k, v in files.items()}, indent=2) + "\n")
    return files


def install_default_model(run: Path, dest: Path) -> int:
    """Copy the parts of a detector run that inference needs into `dest`; returns its bytes.

    Kept: detector.json, detector.yaml, each member's model.safetensors + model.json, and the
    MultiBox run's model files (no checkpoints or logs). Refuses a result over 15 MB.
    """
    info = json.loads((run / "detector.json").read_text())
    staging = dest.with_name(dest.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ("detector.json", "detector.yaml"):
        shutil.copy2(run / name, staging / name)
    folders = list(info["members"]) + ([info["multibox"]] if info.get("multibox") else [])
    for folder in folders:
        (staging / folder).mkdir(parents=True, exist_ok=True)
        for f in (run / folder).iterdir():
            if f.is_file() and f.suffix in (".safetensors", ".json", ".yaml"):
                shutil.copy2(f, staging / folder / f.name)
    size = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())
    if size > MAX_MODEL_BYTES:
        shutil.rmtree(staging)
        raise SystemExit(f"the detector run is {size / 1e6:.1f} MB, above the 15 MB package limit")
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return size
