""".pyc precompilation: runs the host's compileall."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from lab.errors import LabError
from lab.image import cpio
from lab.image.recipe import Tree
from lab.image.tree import _matcher, with_parents

# ---------------------------------------------------------------------------------------------
# .pyc precompilation (runs the host's compileall)


def compile_pyc(tree: Tree, roots: tuple[str, ...], skip: tuple[str, ...]) -> tuple[Tree, int]:
    """Add __pycache__/*.cpython-3XX.pyc for every regular .py under `roots`, except those
    matching `skip` (same pattern rules as trim).

    UNCHECKED_HASH pycs are never compared with their source at import, so the guest neither
    stats sources nor cares about mtimes (all 0 in the archive). ddir makes tracebacks and
    __file__ show the guest path, not the build directory. compileall runs in a child process
    with a fixed PYTHONHASHSEED: marshal writes sets in hash order, so a random seed would make
    the bytes differ between builds."""
    skipped = _matcher(skip)
    sources = {
        n: e
        for n, e in tree.items()
        if n.endswith(".py")
        and stat.S_ISREG(e.mode)
        and any(n.startswith(r + "/") for r in roots)
        and not skipped(n)
    }
    if not sources:
        return dict(tree), 0
    out = dict(tree)
    with tempfile.TemporaryDirectory(prefix="lab-pyc-") as tmp:
        for name, entry in sources.items():
            dest = Path(tmp, name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(entry.data)
        for root in roots:
            if not Path(tmp, root).is_dir():
                continue
            argv = [
                sys.executable,
                "-m",
                "compileall",
                "-q",
                "-j",
                "0",
                "--invalidation-mode",
                "unchecked-hash",
                "-d",
                "/" + root,
                str(Path(tmp, root)),
            ]
            env = {
                "PYTHONHASHSEED": "0",
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "LC_ALL": "C.UTF-8",
            }
            done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                first = (done.stdout + done.stderr).strip().splitlines()[:3]
                raise LabError(
                    f"precompiling /{root} failed ({' | '.join(first)}): "
                    "trim the offending file in the image recipe"
                )
        count = 0
        for path in sorted(Path(tmp).rglob("*.pyc")):
            name = path.relative_to(tmp).as_posix()
            out[name] = cpio.file(name, path.read_bytes(), 0o644)
            count += 1
    return with_parents(out), count
