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
Timings and numbers go to WORK/build_report.json. This script is the recipe; running steps,
the evaluate step's scoring and installing the model are `detect.demo_build`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from detect.demo_build import DETECT, StepRunner, install_default_model, join_shards, write_member_detections

ROOT = Path(__file__).resolve().parents[1]
# `build_demo.py score-members RUN SCENES SPLIT CACHE OUT DEVICE [--shard=i/n] [key=value ...]`
SCORE_COMMAND = "score-members"
EXAMPLE_IMAGES = ["test_01000.jpg", "test_01001.jpg", "test_01002.jpg", "test_01003.jpg", "test_01004.jpg"]

# Scene counts and step settings; --quick shrinks everything to dry-run size.
FULL = {"train": 400, "val": 40, "test": 300, "crops": (30000, 2000), "members": 3, "classifiers": 3,
        "classifier": [], "multibox": [], "detector": []}
QUICK = {"train": 24, "val": 6, "test": 12, "crops": (300, 50), "members": 3, "classifiers": 3,
         "classifier": ["train.epochs=1"], "multibox": ["train.epochs=1", "model.num_priors=64"],
         "detector": ["finetune.epochs=1"]}


class Build(StepRunner):
    """The demo's recipe: one method per step (the step's name)."""

    def __init__(self, work: Path, settings: dict, device: str, install: bool):
        super().__init__(work, ROOT)
        self.s, self.device, self.install_model = settings, device, install

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
        gains from each distinct classifier, not from more members of the same one (docs/demo.md)."""
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
        # In child processes, like every other step, each scoring every n-th image on its share
        # of the cores; the shards' files are then joined. The ensemble's errors are kept too:
        # how many objects some detection finds, and how many it names correctly.
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
            errors = ["--errors"] if name == "ensemble" else []
            self.run([*DETECT, "eval", "--map", "--data", self.path("scenes"), "--split", "test",
                      "--detections", str(path), "--protocol", "voc12", *errors, "--json", str(out)])
            report = json.loads(out.read_text())
            results[name] = report["mAP"]
            if errors:
                self.report["errors_test_ensemble"] = {k: report["errors"][k] for k in
                                                       ("objects", "found", "named_correctly")}
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
