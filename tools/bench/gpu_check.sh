#!/usr/bin/env bash
# The GPU checks in one run: the tests marked `cuda` (tests/test_cuda.py) and every benchmark of
# tools/bench/ with --device cuda where it has that option (the others measure CPU-side work and
# run as they are), sized to finish in under 8 minutes on one GPU. Writes a JSON summary (tests
# passed / failed / skipped, each benchmark's exit status, seconds and printed ratios) and a log.
#
#   tools/bench/gpu_check.sh [SUMMARY.json]     default: $OUT/gpu_check.json, else ./gpu_check.json
#   DEVICE=cpu tools/bench/gpu_check.sh /tmp/gpu_check.json    the script itself, on a CPU, tiny sizes
#
# Settings (environment): DEVICE (cuda), SIZE (gpu, or tiny: a check of the script; default tiny
# when DEVICE=cpu), WHEELS (.whl: the wheels folder installed first), BUDGET (450: seconds by
# which every benchmark has ended, cut short or skipped, so that the run ends inside 8 minutes), ONLY
# (benchmark names, space-separated: run just those, e.g. again after a failure; TESTS=0 skips the tests).
#
# What must travel with it. The GPU machine has PyTorch, torchvision, numpy, scipy, scikit-image,
# pillow, PyYAML, click, tqdm, safetensors, matplotlib, pytest and opencv-python-headless, but not
# opencv-contrib (cv2.ximgproc: selective search), pycocotools or selectivesearch, and no package
# index. Here, once, in the repository root (match --python-version to `python3 --version` there):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       opencv-contrib-python-headless==4.10.0.84 pycocotools==2.0.11
#   python3 -m pip wheel --no-deps -w .whl selectivesearch==0.4   # pure Python, published as source only
#
# then carry `.whl` (54 MiB, opencv-contrib nearly all of it; 4.10.0.84 is the smallest built for
# NumPy 2). With the 10 MiB tree that is just under the 64 MiB one call may send: untracked files
# count too (`git status --short`); if it does not fit, leave opencv-contrib out. The script
# installs the wheels itself, `pip install --no-index --no-deps --target /tmp/site .whl/*.whl` put
# first on PYTHONPATH (its cv2 shadows the machine's contrib-less one), then the project with
# `pip install --no-deps --no-build-isolation -e .` (the repository root stays on PYTHONPATH if
# that fails). Without opencv-contrib the benchmarks that run selective search are skipped and the
# summary says so. With the device tool:
#
#   run(command="tools/bench/gpu_check.sh", carry=[".whl"], timeout_s=560)
set -u -o pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
SUMMARY="${1:-${OUT:-.}/gpu_check.json}"
LOG="${SUMMARY%.json}.log"
DEVICE="${DEVICE:-cuda}"
SIZE="${SIZE:-$([ "$DEVICE" = cpu ] && echo tiny || echo gpu)}"
WHEELS="${WHEELS:-.whl}"
BUDGET="${BUDGET:-450}"
ONLY="${ONLY:-}"
TESTS="${TESTS:-1}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$(dirname "$SUMMARY")"
: >"$LOG"
START=$SECONDS
export PYTHONUNBUFFERED=1

log() { echo "[$((SECONDS - START)) s] $*" | tee -a "$LOG"; }

# ---- setup: carried wheels, the project ------------------------------------------------------
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    log "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into /tmp/site"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl >>"$LOG" 2>&1 && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! (cd /tmp && python3 -c "import detect, backbone, proposals" 2>/dev/null); then
    log "installing the project (pip install --no-deps --no-build-isolation -e .)"
    python3 -m pip install -q --no-deps --no-build-isolation -e . >>"$LOG" 2>&1 || log "pip -e failed: PYTHONPATH only"
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$ROOT"
HAS_XIMGPROC=$(python3 -c "import cv2; cv2.ximgproc.segmentation; print(1)" 2>/dev/null || echo 0)
HAS_TCMALLOC=$( (ldconfig -p 2>/dev/null | grep -q libtcmalloc) && echo 1 || echo 0)
python3 - "$WORK/environment.json" "$DEVICE" <<'EOF' >>"$LOG" 2>&1
import json, platform, sys
import torch
cuda = torch.cuda.is_available()
env = {"python": platform.python_version(), "torch": torch.__version__, "device": sys.argv[2],
       "cuda_available": cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None}
open(sys.argv[1], "w").write(json.dumps(env))
print(env)
EOF

# ---- the tests marked cuda (on a CPU: their CPU variants, which check the checks) -------------
MARK=$([ "$DEVICE" = cpu ] && echo "not cuda" || echo cuda)
log "tests: pytest -m '$MARK' tests/test_cuda.py (TESTS=$TESTS)"
T0=$SECONDS
if [ "$TESTS" = 1 ]; then
    timeout 240 python3 -m pytest -q -p no:cacheprovider -m "$MARK" tests/test_cuda.py --junitxml="$WORK/tests.xml" \
        >>"$LOG" 2>&1
    echo "{\"exit_status\": $?, \"seconds\": $((SECONDS - T0))}" >"$WORK/tests_run.json"
else
    echo '{"exit_status": null, "seconds": 0, "not_run": "TESTS=0"}' >"$WORK/tests_run.json"
fi

# ---- the benchmarks ---------------------------------------------------------------------------
# bench NAME NEEDS LIMIT ARGS...: run tools/bench/NAME.py ARGS (its --json into $WORK/NAME.json
# when it has that option), unless NEEDS (ximgproc, tcmalloc, -) is missing or the budget is spent.
bench() {
    local name=$1 needs=$2 limit=$3 status reason=""
    shift 3
    [ "$needs" = ximgproc ] && [ "$HAS_XIMGPROC" != 1 ] && reason="needs opencv-contrib (cv2.ximgproc): carry its wheel"
    [ "$needs" = tcmalloc ] && [ "$HAS_TCMALLOC" != 1 ] && reason="no tcmalloc library on this machine"
    local left=$((BUDGET - (SECONDS - START)))
    [ "$left" -lt 20 ] && reason="time budget of $BUDGET s spent"
    [ "$limit" -gt "$left" ] && limit=$left  # every benchmark ends inside the budget
    [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]] && return
    if [ -n "$reason" ]; then
        log "bench $name: skipped ($reason)"
        python3 -c 'import json,sys; print(json.dumps({"status": "skipped", "reason": sys.argv[1]}))' "$reason" \
            >"$WORK/$name.run.json"
        return
    fi
    local json=()
    grep -q -- '"--json"' "tools/bench/$name.py" && json=(--json "$WORK/$name.json")
    log "bench $name: python3 tools/bench/$name.py $*"
    local t0=$SECONDS
    timeout "$limit" python3 "tools/bench/$name.py" "$@" "${json[@]}" >"$WORK/$name.out" 2>&1
    status=$?
    cat "$WORK/$name.out" >>"$LOG"
    python3 -c 'import json,sys; print(json.dumps({"status": "ok" if sys.argv[1] == "0" else "timeout" if sys.argv[1] == "124" else "failed", "exit_status": int(sys.argv[1]), "seconds": int(sys.argv[2]), "args": sys.argv[3:]}))' \
        "$status" "$((SECONDS - t0))" "$@" >"$WORK/$name.run.json"
}

D=(--device "$DEVICE")
if [ "$SIZE" = tiny ]; then
    bench region_scoring - 120 "${D[@]}" --regions 24 --batch-size 8 --width 0.125 --crop 64 --classes 5 --repeats 1
    bench training - 120 "${D[@]}" --steps 2 --repeats 1 --workers 0 --width 0.125 --input-size 32 --batch 4 \
        --image-side 48 --regions 8
    bench one_image ximgproc 120 "${D[@]}" --regions 16 --classes 5 --repeats 1 --precisions float32
    bench run_images ximgproc 120 "${D[@]}" --limit 2 --workers 1 --width 0.125 --crop 32 --classes 5 \
        --max-boxes 30 --repeats 1
    bench shared_mode ximgproc 120 "${D[@]}" --regions 16 --rcnn-regions 4 --short-side 200 --max-side 300 \
        --repeats 1 --classes 5
    bench map_eval - 120 --images 100 --classes 10 --loop-classes 3
    bench allocator tcmalloc 120 --workloads score-demo --repeats 1 --threads 1
    bench proposal_workers ximgproc 120 --copies 1 --workers 2
    bench selective_search_scale ximgproc 120 --setting opencv:single --resize-width 150
else
    bench region_scoring - 120 "${D[@]}" --regions 2000 --batch-size 128 --repeats 3
    bench training - 150 "${D[@]}" --steps 12 --repeats 2 --workers 8 --width 1.0 --input-size 224 --batch 64 \
        --regions 128
    bench one_image ximgproc 90 "${D[@]}" --repeats 2
    bench shared_mode ximgproc 90 "${D[@]}" --repeats 2 --precision auto
    bench run_images ximgproc 120 "${D[@]}" --limit 12 --workers 8 --width 1.0 --crop 224 --classes 200 --repeats 1
    bench map_eval - 90 --images 2000 --loop-classes 10
    bench allocator tcmalloc 90 --workloads score-demo,train-demo --repeats 1 --threads 4
    bench proposal_workers ximgproc 90 --copies 1
    bench selective_search_scale ximgproc 90 --setting opencv:fast --setting opencv:single
fi

# ---- the summary --------------------------------------------------------------------------------
python3 - "$WORK" "$SUMMARY" "$((SECONDS - START))" <<'EOF' | tee -a "$LOG"
"""Gather the run's pieces into one JSON summary (tests from the JUnit XML, ratios from each
benchmark's JSON and the lines it printed)."""
import json, re, sys
import xml.etree.ElementTree as ET
from pathlib import Path

work, summary, seconds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
PRINTED = re.compile(r"ratio|speed-?up|faster|x wall", re.I)


def ratios(value, prefix=""):
    """Every number under a key naming a ratio or a speed-up, by its dotted path."""
    found = {}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, v in items:
        path = f"{prefix}{key}"
        if isinstance(v, (int, float)) and not isinstance(v, bool) and re.search(r"ratio|speed", str(key), re.I):
            found[path] = v
        found.update(ratios(v, path + "."))
    return found


tests = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": []}
if (work / "tests.xml").is_file():
    for case in ET.parse(work / "tests.xml").getroot().iter("testcase"):
        name = f"{case.get('classname', '')}.{case.get('name')}"
        kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), None)
        key = {"failure": "failed", "error": "errors", "skipped": "skipped"}.get(kind, "passed")
        tests[key] += 1
        if kind in ("failure", "error"):
            tests["failures"].append(name)
tests.update(json.loads((work / "tests_run.json").read_text()))
benchmarks = {}
for run in sorted(work.glob("*.run.json")):
    name = run.name[:-len(".run.json")]
    record = json.loads(run.read_text())
    if (work / f"{name}.json").is_file():
        record["ratios"] = ratios(json.loads((work / f"{name}.json").read_text()))
    if (work / f"{name}.out").is_file():
        lines = (work / f"{name}.out").read_text(errors="replace").splitlines()
        record["printed"] = [ln.strip() for ln in lines if PRINTED.search(ln)][-12:]
        if record["status"] != "ok":
            record["tail"] = lines[-5:]
    benchmarks[name] = record
out = {"environment": json.loads((work / "environment.json").read_text()), "seconds": seconds,
       "tests": tests, "benchmarks": benchmarks}
summary.write_text(json.dumps(out, indent=1))
failed = [n for n, b in benchmarks.items() if b["status"] in ("failed", "timeout")]
print(f"summary in {summary}: tests {tests['passed']} passed, {tests['failed'] + tests['errors']} failed, "
      f"{tests['skipped']} skipped; benchmarks {len(benchmarks) - len(failed)} ok or skipped, "
      f"{len(failed)} failed ({', '.join(failed) or 'none'}); {seconds} s")
sys.exit(1 if failed or tests["failed"] or tests["errors"] or tests["exit_status"] not in (0, 5, None) else 0)
EOF
