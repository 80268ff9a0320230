"""The `detect` command: a thin click layer over the Python API.

Each subcommand parses its options, loads its config and calls one library function. Bad
input surfaces as `InputError`; `main` prints its one-line message without a traceback and
exits with status 2. The subcommands live in small modules beside this one:

- `cli_backbone`:  summary, eval --accuracy          (the network, classification testing)
- `cli_train`:     train-classifier                  (classification training)
- `cli_data`:      data, eval --map                  (datasets, detection results, mAP)
- `cli_proposals`: proposals, eval --recall          (selective search, merge, cache, recall)
- `cli_multibox`:  train-multibox                    (the MultiBox network)
- `cli_detector`:  train-detector, run, merge-results (the R-CNN detector; joining shards)
- `cli_crops`:     crops                             (classifier crops of a detection data set)
- `cli_weights`:   convert-weights                   (torchvision's ImageNet weights as a run)
"""
from __future__ import annotations

import re
import sys

import click

from backbone.errors import InputError

# The last line of each command's --help: a command that runs as it stands on a checkout
# (the built-in model, the committed examples/), or with the one folder it needs named.
EXAMPLES = {
    "detect": "detect run --images examples/JPEGImages --out runs/detect",
    "summary": "detect summary --width 0.5",
    "train-classifier": "detect train-classifier --data DATA --config configs/demo_classifier.yaml --out runs/cls",
    "data": "detect data --data examples",
    "proposals": "detect proposals --data examples --config configs/demo_proposals.yaml --out runs/proposals",
    "train-multibox": "detect train-multibox --data DATASET --config configs/demo_multibox.yaml --out runs/multibox",
    "train-detector": "detect train-detector --data DATASET --proposals runs/proposals --init runs/cls "
                      "--config configs/demo_detector.yaml --out runs/det",
    "fit-boxes": "detect fit-boxes --model runs/det --data DATASET --split train --proposals runs/proposals",
    "run": "detect run --image examples/JPEGImages/test_01003.jpg --out runs/detect",
    "merge-results": "detect merge-results runs/detect",
    "eval": "detect eval --map --data examples --split test",
    "crops": "detect crops --data examples --split test --out runs/crops --size 64",
    "convert-weights": "detect convert-weights --torchvision googlenet-1378be20.pth --out runs/tv_googlenet",
}


def package_version() -> str:
    """The installed distribution's version (pyproject.toml), or "unknown" in a bare checkout.
    Read only when asked for: importlib.metadata costs `detect --help` about 0.05 s."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("googlenet-detect")
    except PackageNotFoundError:
        return "unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, help="Show the version and exit.",
              callback=lambda ctx, _, value: value and (click.echo(f"detect {package_version()}"), ctx.exit()))
def cli() -> None:
    """GoogLeNet (Szegedy et al. 2014) and its R-CNN style detector.

    \b
    Typical pipeline:
      detect train-classifier --data IMAGENET_DIR --config configs/imagenet_googlenet.yaml --out runs/cls
      detect train-multibox   --data DATASET --config configs/demo_multibox.yaml --out runs/multibox
      detect proposals        --data DATASET --config configs/demo_proposals.yaml --out runs/proposals
      detect train-detector   --data DATASET --proposals runs/proposals --init runs/cls --out runs/det
      detect eval --map       --data DATASET --model runs/det --protocol ilsvrc
      detect run --images photos/ --model runs/det --out runs/detect
    Without --model, `run` and `eval --map` use the built-in demo detector (detect/default_model/).

    \b
    Environment:
      DETECT_ALLOCATOR  auto (default) | tcmalloc | system. On Linux, `detect` restarts itself
                        with tcmalloc preloaded where the machine has it (Debian/Ubuntu:
                        apt-get install libtcmalloc-minimal4): 1.26-1.45x faster network passes
                        on the CPU (docs/performance.md). system: glibc's malloc.
    """


def _register() -> None:
    from detect import (cli_backbone, cli_crops, cli_data, cli_detector, cli_eval, cli_fit_boxes, cli_multibox,
                        cli_proposals, cli_train, cli_weights)

    for command in (cli_backbone.summary, cli_train.train_classifier, cli_data.data, cli_proposals.proposals,
                    cli_multibox.train_multibox, cli_detector.train_detector, cli_fit_boxes.fit_boxes, cli_detector.run,
                    cli_detector.merge_results, cli_eval.eval_command, cli_crops.crops,
                    cli_weights.convert_weights):
        cli.add_command(command)
    for command in (cli, *cli.commands.values()):
        command.epilog = f"\b\nExample:\n  {EXAMPLES[command.name if command is not cli else 'detect']}"


_register()


def usage_line(e: click.ClickException) -> str:
    """One line for a command-line mistake: `error: FILE: problem` when a path option names a
    missing file, else `error: --option: problem`, with where to read more."""
    ctx = getattr(e, "ctx", None)
    more = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    param = getattr(e, "param", None)
    if type(e) is click.BadParameter and param is not None:
        name = param.opts[0] if getattr(param, "opts", None) else param.human_readable_name
        found = re.fullmatch(r"(?:File|Directory|Path) '(.*)' (.*?)\.?", e.message)
        if found:
            return f"error: {found[1]}: {found[2]} ({name}){more}"
        return f"error: {name}: {e.message.rstrip('.')}{more}"
    return f"error: {e.format_message().rstrip('.')}{more}"


NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the group, turning InputError and usage mistakes into one
    line on stderr (exit status 2)."""
    try:
        cli.main(args=argv, standalone_mode=False, prog_name="detect")
    except InputError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except NO_ARGS_IS_HELP as e:  # a bare `detect` (click >= 8.2 raises; older ones print and return)
        click.echo(e.ctx.get_help())
    except click.ClickException as e:
        click.echo(usage_line(e), err=True)
        sys.exit(e.exit_code)
    except FloatingPointError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(3)
    except KeyboardInterrupt:
        click.echo("interrupted; finished work is kept", err=True)
        sys.exit(130)


if __name__ == "__main__":  # python -m detect.cli (the allocator restart is detect.entry's)
    main()
