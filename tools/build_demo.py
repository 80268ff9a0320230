"""Rebuild the demo detector from nothing, with the project's own commands, and ship it.

    python tools/build_demo.py                 # the full recipe: about 27 minutes on 2 CPU cores
    python tools/build_demo.py --quick         # a few-minute dry run of every step (tiny data)

Run from the repository root (or anywhere: the script finds the root itself). Every step is a
`detect` command or a tools/ script, printed before it runs, so the recipe can be followed by
hand (docs/demo.md lists it):

 1. crops       tools/make_item_crops.py            garments pasted on photographs, one per image, class folders
 2. classifier  detect train-classifier  (x 3)      three narrow GoogLeNets on them, side by side
                                                    (configs/demo_classifier.yaml)
 3. scenes      tools/make_scenes.py                train / val / test scenes (Pascal VOC)
 4. multibox    detect train-multibox               MultiBox on the train scenes (configs/demo_multibox.yaml)
 5. proposals   detect proposals                    selective search + MultiBox, cached, every split
 6. detector    detect train-detector               R-CNN fine-tuning of 3 members, one from each
                                                    classifier, 2 processes (configs/demo_detector.yaml)
 7. evaluate    detect eval --map --detections      VOC 2012 mAP@0.5 of the ensemble and of each member
 8. recall      detect eval --recall                boxes/image and recall of each proposal source
 9. install     copy into detect/default_model/     the built-in model (<= 15 MB)
10. smoke       detect run --image examples/...     seconds per image, a picture with boxes

A step that finished is marked in WORK/.done/ and skipped when the script is run again, so
an interrupted build continues where it stopped (the training commands resume from their
checkpoints); --fresh starts over. Step 7 scores every test region once per member from the
cached proposals and writes the ensemble's detections (the mean of the members' softmax, as
`Detector.score_regions` computes it) and each member's as COCO results JSON, then evaluates
each file with `detect eval --map --detections`: one network pass per member instead of two.
Timings and numbers go to WORK/build_report.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DETECT = [sys.executable, "-c", "from detect.entry import main; main()"]
MAX_MODEL_BYTES = 15 * 1024 * 1024
# `build_demo.py score-members RUN SCENES SPLIT CACHE OUT DEVICE [--shard=i/n] [key=value ...]`
SCORE_COMMAND = "score-members"
EXAMPLE_IMAGES = ["test_01000.jpg", "test_01001.jpg", "test_01002.jpg", "test_01003.jpg", "test_01004.jpg"]

# Scene counts and step settings; --quick shrinks everything to dry-run size.
FULL = {"train": 400, "val": 40, "test": 300, "crops": (30000, 2000), "members": 3, "classifiers": 3,
        "classifier": [], "multibox": [], "detector": []}
QUICK = {"train": 24, "val": 6, "test": 12, "crops": (300, 50), "members": 3, "classifiers": 3,
         "classifier": ["train.epochs=1"], "multibox": ["train.epochs=1", "model.num_priors=64"],
         "detector": ["finetune.epochs=1"]}


def shown(args: list[str]) -> str:
    """A command as a user would type it: `detect ...`, `python ...`."""
    words = ["detect", *args[3:]] if args[:3] == DETECT else [Path(a).name if a == sys.executable else a
                                                              for a in args]
    return " ".join(words)


class Build:
    """Runs the steps in order, times them and keeps the report up to date."""

    def __init__(self, work: Path, settings: dict, device: str, install: bool):
        self.work, self.s, self.device, self.install_model = work, settings, device, install
        self.report_path = work / "build_report.json"
        self.report = json.loads(self.report_path.read_text()) if self.report_path.is_file() else {}
        self.report.setdefault("steps", {})
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}

    def path(self, name: str) -> str:
        return str(self.work / name)

    def run(self, args: list[str]) -> None:
        print("$ " + shown(args), flush=True)
        subprocess.run(args, cwd=ROOT, env=self.env, check=True)

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
            procs.append((subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log,
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

    # ---- the steps ---------------------------------------------------------------------------

    def crops(self) -> None:
        train, val = self.s["crops"]
        self.run([sys.executable, "tools/make_item_crops.py", "--out", self.path("item_crops"),
                  "--train", str(train), "--val", str(val), "--size", "56", "--workers", "2",
                  "--background", "0.2"])

    def classifier_dirs(self) -> list[str]:
        """classifier/ (seed 0; MultiBox's trunk too), classifier_1/ (seed 1), ..."""
        return [self.path("classifier" if i == 0 else f"classifier_{i}") for i in range(self.s["classifiers"])]

    def classifier(self) -> None:
        """The classifiers train side by side, one thread each (the config's threads 1, workers 0):
        a classifier of this size is compute-bound on one thread and gains nothing from a second,
        so on 2 cores two ran 31-34 s an epoch each and three ~45 s, against 29 s for one alone
        (docs/demo.md). Members of different classifiers make less alike errors: the ensemble
        gains from each distinct classifier, not from more members of the same one (docs/demo.md,
        seventh session)."""
        commands = []
        for i, out in enumerate(self.classifier_dirs()):
            resume = ["--resume"] if (Path(out) / "checkpoint.pt").is_file() else []
            commands.append([*DETECT, "train-classifier", "--data", self.path("item_crops"), "--config",
                             "configs/demo_classifier.yaml", "--out", out, "--device", self.device,
                             *resume, f"train.seed={i}", *self.s["classifier"]])
        self.run_parallel(commands, [Path(d + ".log") for d in self.classifier_dirs()[1:]])

    def scenes(self) -> None:
        self.run([sys.executable, "tools/make_scenes.py", "--out", self.path("scenes"),
                  "--train", str(self.s["train"]), "--val", str(self.s["val"]),
                  "--test", str(self.s["test"]), "--seed", "0"])

    def multibox(self) -> None:
        out = self.path("multibox")
        resume = ["--resume"] if (Path(out) / "checkpoint.pt").is_file() else []
        self.run([*DETECT, "train-multibox", "--data", self.path("scenes"), "--split", "train",
                  "--val-split", "val", "--config", "configs/demo_multibox.yaml", "--out", out, "--init",
                  self.path("classifier"), "--device", self.device, *resume, *self.s["multibox"]])

    def proposals(self) -> None:
        for split in ("train", "val", "test"):
            self.run([*DETECT, "proposals", "--data", self.path("scenes"), "--split", split,
                      "--config", "configs/demo_proposals.yaml", "--out", self.path("proposals"),
                      f"multibox.model={self.path('multibox')}"])

    def ranks(self) -> int:
        """Processes that share the CPU work of fine-tuning and scoring: 2 on a CPU with 2 or
        more cores (threads split between them). In the demo's builds on 2 cores: a member epoch
        12.8 s against 16 s for one process on 2 threads, the evaluate step 94 s against 141 s."""
        if self.device == "auto":
            from backbone.device import resolve_device
            self.device = str(resolve_device("auto"))
        return 2 if self.device == "cpu" and (os.cpu_count() or 1) >= 2 else 1

    def detector(self) -> None:
        out = self.path("detector")
        resume = ["--resume"] if any(Path(out).glob("**/checkpoint.pt")) else []
        inits = [a for run in self.classifier_dirs() for a in ("--init", run)]
        ranks = self.ranks()
        # Data-parallel under torchrun: each process takes one of the 2 images of a step.
        launcher = DETECT if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                              f"--nproc_per_node={ranks}", "-m", "detect.entry"]
        threads = [] if ranks == 1 else [f"finetune.threads={max(1, (os.cpu_count() or 1) // ranks)}"]
        self.run([*launcher, "train-detector", "--data", self.path("scenes"), "--split", "train",
                  "--val-split", "val", "--proposals", self.path("proposals"), *inits,
                  "--config", "configs/demo_detector.yaml", "--out", out,
                  "--members", str(self.s["members"]), "--device", self.device, *resume,
                  f"proposals.multibox.model={self.path('multibox')}", *threads, *self.s["detector"]])

    def evaluate(self) -> None:
        # In child processes, like every other step (they import the project from ROOT), each
        # scoring every n-th image on its share of the cores; the shards' files are then joined.
        n = self.ranks()
        shards = [self.work / "eval" / f"shard_{i}" for i in range(n)]
        commands = [[sys.executable, "tools/build_demo.py", SCORE_COMMAND, self.path("detector"),
                     self.path("scenes"), "test", self.path("proposals"), str(out), self.device,
                     f"--shard={i}/{n}"] for i, out in enumerate(shards)]
        shards[0].mkdir(parents=True, exist_ok=True)
        self.run_parallel(commands, [out.with_suffix(".log") for out in shards[1:]])
        files = join_shards(shards, self.work / "eval")
        results = {}
        for name, path in files.items():
            out = self.work / "eval" / f"{name}.map.json"
            self.run([*DETECT, "eval", "--map", "--data", self.path("scenes"), "--split", "test",
                      "--detections", str(path), "--protocol", "voc12", "--json", str(out)])
            results[name] = json.loads(out.read_text())["mAP"]
        self.report["map_voc12_test"] = results

    def recall(self) -> None:
        """Recall of the merged cache (its rows: selective search, MultiBox after the merge's
        de-duplication, merged) and of MultiBox alone (a cache with selective search off)."""
        self.run([*DETECT, "proposals", "--data", self.path("scenes"), "--split", "test",
                  "--config", "configs/demo_proposals.yaml", "--out", self.path("proposals_multibox"),
                  "selective_search.enabled=false", f"multibox.model={self.path('multibox')}"])
        for name, cache in (("merged_cache", "proposals"), ("multibox_alone", "proposals_multibox")):
            out = self.work / "eval" / f"recall_{name}.json"
            self.run([*DETECT, "eval", "--recall", "--data", self.path("scenes"), "--split", "test",
                      "--proposals", self.path(cache), "--json", str(out)])
            self.report.setdefault("recall_test", {})[name] = json.loads(out.read_text())["sources"]

    def install(self) -> bool:
        if not self.install_model:
            print("(--no-install: detect/default_model/ left as it is)")
            return False
        size = install_default_model(self.work / "detector", ROOT / "detect" / "default_model")
        self.report["default_model_bytes"] = size
        print(f"installed detect/default_model/ ({size / 1e6:.1f} MB)")
        return True

    def smoke(self) -> None:
        model = ["--model", self.path("detector")] if not self.install_model else []
        images = [a for name in EXAMPLE_IMAGES for a in ("--image", f"examples/JPEGImages/{name}")]
        start = time.perf_counter()
        self.run([*DETECT, "run", *images, *model, "--out", self.path("run_examples"), "--device", self.device])
        self.report["run_seconds_per_image_incl_startup"] = round(
            (time.perf_counter() - start) / len(EXAMPLE_IMAGES), 2)


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
    import torch
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


def main(argv: list[str] | None = None) -> None:
    if argv is None:  # from the shell: this process and every step inherit the allocator `detect` would choose
        from detect.allocator import use_tcmalloc
        use_tcmalloc()
        argv = sys.argv[1:]
    if argv[:1] == [SCORE_COMMAND]:  # the evaluate step's child process
        run, scenes, split, cache, out, device = argv[1:7]
        from detect.sharding import parse_shard
        rest = [a for a in argv[7:] if not a.startswith("--shard=")]
        shard = next((parse_shard(a[len("--shard="):]) for a in argv[7:] if a.startswith("--shard=")), (0, 1))
        if shard[1] > 1 and device == "cpu":
            import torch
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // shard[1]))
        write_member_detections(Path(run), Path(scenes), split, Path(cache), Path(out), device, tuple(rest), shard)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=None, help="work folder (default runs/demo_build, or runs/demo_build_quick with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny data and 1 epoch per step: a dry run")
    parser.add_argument("--fresh", action="store_true", help="delete the work folder first")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--no-install", dest="install", action="store_false",
                        help="leave detect/default_model/ alone (default with --quick)")
    parser.add_argument("--only", nargs="*", default=None,
                        help="run only these steps (names as listed above), again if they were done before")
    for split in ("train", "val", "test"):
        parser.add_argument(f"--{split}", type=int, default=None,
                            help=f"number of {split} scenes (default {FULL[split]}; --quick {QUICK[split]})")
    args = parser.parse_args(argv)
    work = Path(args.work or ("runs/demo_build_quick" if args.quick else "runs/demo_build"))
    work = work if work.is_absolute() else ROOT / work
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    settings = dict(QUICK if args.quick else FULL)
    settings.update({s: getattr(args, s) for s in ("train", "val", "test") if getattr(args, s) is not None})
    build = Build(work, settings, args.device, args.install and not args.quick)
    steps = ["crops", "classifier", "scenes", "multibox", "proposals", "detector", "evaluate",
             "recall", "install", "smoke"]
    for name in steps:
        if args.only is None or name in args.only:
            build.step(name, getattr(build, name), again=args.only is not None)
    print(json.dumps(build.report, indent=2))


if __name__ == "__main__":
    main()
