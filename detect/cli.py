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
"""
from __future__ import annotations

import sys

import click

from backbone.errors import InputError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """GoogLeNet (Szegedy et al. 2014) and its R-CNN style detector.

    \b
    Typical pipeline:
      detect train-classifier --data IMAGENET_DIR --config configs/imagenet_googlenet.yaml --out runs/cls
      detect train-multibox   --data DATASET --config configs/... --out runs/multibox
      detect proposals        --data DATASET --config configs/... --out runs/proposals
      detect train-detector   --data DATASET --proposals runs/proposals --init runs/cls --out runs/det
      detect eval --map       --data DATASET --model runs/det --protocol ilsvrc
      detect run --image photo.jpg --model runs/det

    \b
    Environment:
      DETECT_ALLOCATOR  auto (default) | tcmalloc | system. On Linux, `detect` restarts itself
                        with tcmalloc preloaded where the machine has it (Debian/Ubuntu:
                        apt-get install libtcmalloc-minimal4): 1.26-1.45x faster network passes
                        on the CPU (docs/performance.md). system: glibc's malloc.
    """


def _register() -> None:
    from detect import cli_backbone, cli_data, cli_detector, cli_multibox, cli_proposals, cli_train
    from detect.cli_eval import eval_command

    cli.add_command(cli_backbone.summary)
    cli.add_command(cli_train.train_classifier)
    cli.add_command(cli_data.data)
    cli.add_command(cli_proposals.proposals)
    cli.add_command(cli_multibox.train_multibox)
    cli.add_command(cli_detector.train_detector)
    cli.add_command(cli_detector.run)
    cli.add_command(cli_detector.merge_results)
    cli.add_command(eval_command)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the group, turning InputError into a one-line message."""
    try:
        cli.main(args=argv, standalone_mode=False, prog_name="detect")
    except InputError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except FloatingPointError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(3)
    except KeyboardInterrupt:
        click.echo("interrupted; finished work is kept", err=True)
        sys.exit(130)
