"""`flywheel` command line. One module per command group; each adds its subcommands to the parser."""

from __future__ import annotations

import argparse
import sys

from flywheel.cli import (
    datasets,
    demo,
    deploy,
    health,
    migrate,
    models,
    monitoring,
    predict,
    runs,
    specs,
    stack,
    tokens,
    traces,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flywheel", description="Flywheel: the event-driven MLOps suite")
    sub = parser.add_subparsers(dest="command", required=True)
    stack.add_commands(sub)
    health.add_commands(sub)
    migrate.add_commands(sub)
    for group in (datasets, specs, runs, models, deploy, predict):
        group.add_commands(sub)
    traces.add_commands(sub)
    monitoring.add_commands(sub)
    demo.add_commands(sub)
    tokens.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
