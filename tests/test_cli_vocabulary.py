"""The `detect` command as a whole: --version, python -m, an example ending every --help,
one vocabulary of option names, one-line errors for command-line mistakes, a fast --help."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import run
from detect.cli import EXAMPLES, cli, package_version

REPO = Path(__file__).resolve().parents[1]


def _help(capsys, *argv: str) -> str:
    code, out, err = run(capsys, *argv, "--help")
    assert code == 0, err
    return out


@pytest.mark.parametrize("command", ["", *sorted(cli.commands)])
def test_every_help_ends_with_an_example_of_its_own_command(command, capsys):
    lines = _help(capsys, *([command] if command else [])).rstrip().splitlines()
    assert lines[-2].strip() == "Example:"
    assert lines[-1].strip().startswith(f"detect {command}".strip())
    assert lines[-1].strip() == EXAMPLES[command or "detect"]


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"detect {package_version()}" and package_version()[0].isdigit()


@pytest.mark.parametrize("module", ["detect", "detect.cli"])
def test_python_dash_m_prints_the_help(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: detect") and "run " in done.stdout


def test_help_does_not_import_torch():
    """`detect --help` must not wait for torch (seconds): the subcommands import it when they run."""
    code = "import sys; from detect.cli import main; main(['--help'])\n" \
           "print(sorted(m for m in ('torch', 'torchvision', 'numpy', 'cv2', 'scipy') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_summary_architectures_match_the_models():
    from backbone.models import ARCHS
    from detect.cli_backbone import ARCH_NAMES

    assert sorted(ARCH_NAMES) == sorted(ARCHS)


def _options(command) -> dict[str, str]:
    return {opt: (getattr(param, "help", None) or "") for param in command.params for opt in param.opts}


VOCABULARY = {  # option -> a word its help must hold in every command that has it
    "--workers": "process", "--threads": "thread", "--device": "cuda", "--batch-size": "per",
    "--model": "folder", "--out": "",
}


def test_one_option_name_means_one_thing():
    seen = {}
    for name, command in cli.commands.items():
        for opt, text in _options(command).items():
            if opt in VOCABULARY:
                assert VOCABULARY[opt] in text.lower(), (name, opt, text)
                seen.setdefault(opt, []).append(name)
    assert {"run", "eval"} <= set(seen["--batch-size"]) and {"run", "eval"} <= set(seen["--device"])
    assert {"run", "eval", "proposals"} <= set(seen["--workers"])


@pytest.mark.parametrize("argv, words", [
    (["run", "--score-threshold", "2"], ["--score-threshold", "2"]),
    (["run", "--score-threshold", "-1"], ["--score-threshold", "-1"]),
    (["run", "--display-threshold", "1.5"], ["--display-threshold"]),
    (["run", "--workers", "-1"], ["--workers"]),
    (["run", "--threads", "0"], ["--threads"]),
    (["run", "--batch-size", "0"], ["--batch-size"]),
    (["eval", "--map", "--data", "/no/such/set"], ["/no/such/set", "does not exist", "--data"]),
    (["run", "--no-such-option"], ["--no-such-option"]),
])
def test_command_line_mistakes_are_one_line(argv, words, capsys):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "", (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(w in lines[0] for w in words), (words, lines[0])


def test_a_config_typo_names_the_closest_key(tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("train:\n  epoch: 3\n")
    code, out, err = run(capsys, "train-classifier", "--data", str(tmp_path), "--config", str(config),
                         "--out", str(tmp_path / "r"))
    assert code == 2
    assert err.strip() == f"error: {config}: unknown key 'train.epoch' (did you mean train.epochs?)"


def test_training_options_are_shortcuts_for_config_settings():
    from detect.cli_train import option_overrides

    assert option_overrides("train", batch_size=8, workers=None, threads=0) == ["train.batch_size=8",
                                                                                  "train.threads=0"]
    code = cli.commands["train-classifier"]
    assert {"--workers", "--threads", "--batch-size"} <= set(_options(code))


def test_eval_map_without_a_model_runs_the_built_in_one(tmp_path, capsys):
    from detect.data import write_voc
    from detect.detector import DEFAULT_MODEL_DIR

    classes = json.loads((DEFAULT_MODEL_DIR / "detector.json").read_text())["classes"]
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "classes.txt").write_text("\n".join(classes) + "\n")  # the model's order
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "JPEGImages" / "a.png")
    write_voc(tmp_path, "a", (64, 64), torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.tensor([2]), classes,
              filename="a.png")
    threads = torch.get_num_threads()
    try:
        code, out, err = run(capsys, "eval", "--map", "--data", str(tmp_path), "--device", "cpu")
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    assert "mAP" in out and classes[1] in out  # the built-in model's classes: it was loaded
