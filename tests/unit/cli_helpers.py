"""What the CLI unit tests share: parsing argv with the real parser, rendering Rich output as text."""

from __future__ import annotations

import io

from rich.console import Console

from flywheel.cli import build_parser


def render(renderable, width: int = 220) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None, force_terminal=False).print(renderable)
    return out.getvalue()


def parse(*argv: str):
    return build_parser().parse_args(list(argv))
