"""The `lab` command line. Parses arguments, calls the stage modules, prints results.

User errors (LabError) print as one line and exit non-zero; tracebacks are
reserved for bugs. Exit codes: 0 success, 1 a failed result (a build that does
not compile), 2 bad input or infrastructure trouble, 130 interrupted.

Each command is argument handling plus a call into its stage (the matrix run is
lab.run.orchestrate). Modules: parser (the sub-commands) and options (the options they
share), printer (the human output about cells), common, kernels (build, boot), cells (run,
classify), matrix, hosts (hosts check; the only importer of lab.hosts), reproduce, ledger,
tools (report, compare, merge, image, config show, doctor, setup); main is here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from lab import proc
from lab.cli.common import BuildFailed
from lab.cli.parser import _parser
from lab.errors import LabError, printable

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    proc.install_signal_handlers()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except BuildFailed as exc:
        print(f"lab: {printable(str(exc))}", file=sys.stderr)
        return 1
    except LabError as exc:
        print(f"lab: error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        proc.kill_all()
        print("lab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except proc.Terminated as exc:
        proc.kill_all()
        print(f"lab: {exc}; stopped", file=sys.stderr)
        return 128 + exc.signum
