"""What every command shares: loading lab.toml, the failed-build exit."""

from __future__ import annotations

import argparse
from pathlib import Path

from lab import config
from lab.errors import LabError


class BuildFailed(LabError):
    """A kernel did not compile: a result, exit status 1."""


def _load(args: argparse.Namespace) -> config.LabConfig:
    return config.load(Path(args.config))
