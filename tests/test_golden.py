"""Golden files: the lab's outputs pinned byte for byte before the package is reshaped.

Each golden under tests/golden/ is what one piece of the lab renders from fixed input:
  argv/<arch>.txt             the QEMU argv, one argument a line, of a real matrix cell
                              (C0/depletion) and of `lab boot` (C0), under TCG and KVM;
  config/<arch>-<variant>.txt the variant as lab.toml expands it and its rendered config
                              fragments, as `lab config show` prints them (no kernel tree);
  report/*                    report.html, summary.md, junit.xml and the terminal summary
                              of the fixture run in tests/data/run/ (see its README.md);
  classify/<log>.json         `lab classify --json` on each corpus log (the log's FACTS
                              header, if any, as a cell directory).
Paths that depend on the machine (the checkout, temporary and cache directories) are
replaced by $-names, so a golden is the same everywhere.

A refactor must leave them byte-identical; a change of behaviour regenerates them
(LAB_REGEN=1, see REGEN) and the diff shows a reviewer what the change did.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from test_classify import CORPUS_FILES, load_case

from lab import build, cache, cli, config, report
from lab.classify import CLASSES, classify
from lab.image import BaseImage
from lab.run import testcase
from lab.run.cell import Cell
from lab.run.job import Inputs, prepare_cell
from lab.vm import boot

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
FIXTURE = Path(__file__).resolve().parent / "data" / "run"
FIXTURE_RUN = "20261126-080000-matrix-5e1f"
# The cache directory the fixture's run.json names (kernel directories with their
# rendered fragment.config live under tests/data/run/cache/).
FIXTURE_CACHE = "/home/lab/.cache/lab"
REGEN = os.environ.get("LAB_REGEN") == "1"
REGEN_CMD = "LAB_REGEN=1 .venv/bin/python -m pytest tests/test_golden.py"
ARGV_CELL = ("C0", "depletion")  # a CMA-pool variant: its cmdline has secretmem=64M
ACCELS = ("tcg", "kvm")  # lab.toml's `accel`; kvm turns `-cpu max` into `-cpu host`

Goldens = dict[str, str]  # path under tests/golden -> its text


def _normalise(text: str, paths: Mapping[Path, str]) -> str:
    """Machine-dependent paths -> $-names (longest first: nested paths stay apart)."""
    for path, name in sorted(paths.items(), key=lambda kv: -len(str(kv[0]))):
        text = text.replace(path.as_uri(), f"file://{name}").replace(str(path), name)
    return text


def _real_config(cache_dir: Path) -> config.LabConfig:
    # The cache directory comes from the environment; pin it.
    return dataclasses.replace(config.load(REPO / "lab.toml"), cache_dir=cache_dir)


# --- argv -------------------------------------------------------------------------------


def _kernel(cfg: config.LabConfig, arch: str, variant: str) -> build.Kernel:
    d = cfg.cache_dir / "kernels" / f"key-{arch}-{variant}"
    kernel_image = d / Path(cfg.arch(arch).image).name
    meta = {"image_sha256": "i" * 64, "config_sha256": "c" * 64}
    return build.Kernel(
        f"key-{arch}-{variant}", d, arch, variant, kernel_image, d / "vmlinux", d / "config",
        d / "System.map", d / "build.log", meta, True,
    )  # fmt: skip


def _base(cfg: config.LabConfig, arch: str) -> BaseImage:
    deb = cfg.arch(arch).deb_arch
    path = cfg.cache_dir / "images" / deb / "key" / "base.cpio.gz"
    return BaseImage(path, "key", deb, "0" * 64, (), 1, 1, 1, 1.0, "", True)


def _with_accel(cfg: config.LabConfig, accel: str) -> config.LabConfig:
    """lab.toml with `[arch.*.qemu] accel` set: "auto" would probe KVM (boot QEMU) and
    answer differently per host."""
    arches = {n: dataclasses.replace(a, qemu=dataclasses.replace(a.qemu, accel=accel))
              for n, a in cfg.arches.items()}  # fmt: skip
    return dataclasses.replace(cfg, arches=arches)


def _cell_argv(cfg: config.LabConfig, cell: Cell, workdir: Path) -> list[str]:
    """As lab.run.execute launches a matrix cell, up to the point QEMU would start."""
    kernel = _kernel(cfg, cell.arch.name, cell.variant.name)
    base = _base(cfg, cell.arch.name)
    job, files = prepare_cell(cfg, cell, Inputs(kernel, base))
    req = job.launch_request(kernel.image, base.path, files, cfg.cache_dir)
    return boot.launch(dataclasses.replace(req, boot_id="0" * 16), workdir).launch.argv()


def _boot_argv(cfg: config.LabConfig, cell: Cell, workdir: Path) -> list[str]:
    """As `lab boot --arch A --variant V` launches its shell, up to QEMU's start."""
    arch, variant = cell.arch, cell.variant
    kernel = _kernel(cfg, arch.name, variant.name)
    req = boot.request(cfg, arch, variant, kernel, _base(cfg, arch.name), {"mode": "shell"})
    return boot.launch(req, workdir).launch.argv()


def argv_goldens(tmp: Path) -> Goldens:
    """The QEMU argv per arch of one real cell of lab.toml, and of `lab boot` with the
    same variant, under TCG and KVM: Launch.argv() of what the two boot paths prepare
    (nothing is started)."""
    out: Goldens = {}
    for arch_name in config.load(REPO / "lab.toml").arches:
        paths = {tmp / "cache": "$CACHE", REPO: "$REPO"}
        lines = []
        for accel in ACCELS:
            cfg = _with_accel(_real_config(tmp / "cache"), accel)
            tcs = {t.name: t for t in testcase.discover(cfg.testcases_dir, CLASSES)}
            cell = Cell(cfg.arch(arch_name), cfg.variant(ARGV_CELL[0]), tcs[ARGV_CELL[1]])
            base = _base(cfg, arch_name).path
            base.parent.mkdir(parents=True, exist_ok=True)
            base.write_bytes(b"base image")
            cell_dir = tmp / "results" / "run" / "cells" / cell.dirname
            boot_dir = tmp / "boots" / f"{arch_name}-{cell.variant.name}"
            paths |= {cell_dir: "$CELL_DIR", boot_dir: "$BOOT_DIR"}
            lines += [f"# matrix cell {cell.id}, accel = {accel!r}"]
            lines += _cell_argv(cfg, cell, cell_dir)
            lines += [
                f"# lab boot --arch {arch_name} --variant {cell.variant.name}, accel = {accel!r}"
            ]
            lines += _boot_argv(cfg, cell, boot_dir)
        out[f"argv/{arch_name}.txt"] = _normalise("\n".join(lines) + "\n", paths)
    return out


# --- config fragments ---------------------------------------------------------------------


def config_goldens(tmp: Path) -> Goldens:
    """Every variant of lab.toml on every arch: what the variant expands to, then its
    fragments as `lab config show` prints them, each with the sha256 build meta records."""
    cfg = _real_config(tmp / "cache")
    out: Goldens = {}
    for arch in cfg.arches.values():
        for v in cfg.variants:
            lines = [
                f"# lab config for {arch.name}/{v.name} (family {v.family})",
                f"# description: {v.description}",
                f"# params: {json.dumps(dict(v.params))}",
                f"# series: {' '.join(v.series)}",
                f"# configs: {' '.join(v.configs)}",
                f"# cmdline: {v.cmdline}",
                f"# banner: {v.banner}",
            ]
            for frag in build.render_fragments(cfg, arch, v):
                lines.append(f"# --- rendered {frag.template} (sha256 {cache.digest(frag.text)})")
                lines.append(frag.text.rstrip())
            text = "\n".join(lines) + "\n"
            out[f"config/{arch.name}-{v.name}.txt"] = _normalise(text, {REPO: "$REPO"})
    return out


# --- reports of the fixture run ---------------------------------------------------------


def report_goldens(tmp: Path) -> Goldens:
    """The three reports and the terminal summary of tests/data/run, rendered in a copy
    whose run.json points at the copy's kernel directories."""
    root = tmp / "fixture"
    shutil.copytree(FIXTURE, root)
    run_dir = root / "results" / FIXTURE_RUN
    cache_dir = root / "cache"
    run_json = run_dir / "run.json"
    run_json.write_text(run_json.read_text().replace(FIXTURE_CACHE, str(cache_dir)))
    report.render(run_dir)
    paths = {cache_dir: FIXTURE_CACHE, run_dir: "$RUN_DIR"}
    out = {f"report/{name}": (run_dir / name).read_text() for name in report.REPORTS}
    out["report/text-summary.txt"] = report.text_summary(run_dir) + "\n"
    return {k: _normalise(v, paths) for k, v in out.items()}


# --- lab classify --json on the corpus ------------------------------------------------------


@contextlib.contextmanager
def _lab_signal_handlers_undone() -> Iterator[None]:
    """cli.main installs SIGTERM/SIGHUP handlers; pytest's process keeps its own."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def _lab_classify_json(target: Path) -> str:
    stdout = io.StringIO()
    with _lab_signal_handlers_undone(), contextlib.redirect_stdout(stdout):
        rc = cli.main(["classify", "--json", str(target)])
    assert rc == 0, f"lab classify {target} exited {rc}"
    return stdout.getvalue()


def _as_cell_dir(path: Path, d: Path) -> Path:
    """A corpus log with FACTS as the cell directory a run leaves: console.log,
    result.jsonl (the records) and cell.json (ready, deadline, QEMU exit, banner)."""
    case = load_case(path)
    facts = case.facts
    assert facts is not None
    d.mkdir()
    (d / "console.log").write_bytes(path.read_bytes().partition(b"\n\n")[2])
    (d / "result.jsonl").write_text("".join(json.dumps(r) + "\n" for r in facts.records))
    cell = {
        "ready": facts.ready,
        "deadline": facts.deadline,
        "qemu_exit": facts.qemu_exit,
        "banner": facts.expected_banner,
    }
    (d / "cell.json").write_text(json.dumps(cell))
    return d


def classify_goldens(tmp: Path) -> Goldens:
    out: Goldens = {}
    for path in CORPUS_FILES:
        case = load_case(path)
        if case.facts is None:
            target = tmp / path.name
            target.write_bytes(path.read_bytes().partition(b"\n\n")[2])
        else:
            target = _as_cell_dir(path, tmp / path.stem)
        text = _lab_classify_json(target)
        # The CLI must have seen what the corpus says the lab knew (facts included).
        direct = json.dumps(classify(case.console, case.facts).to_json(), indent=2) + "\n"
        assert text == direct, f"{path.name}: lab classify --json differs from classify()"
        out[f"classify/{path.stem}.json"] = _normalise(text, {tmp: "$TMP", REPO: "$REPO"})
    return out


# --- checking and regenerating ------------------------------------------------------------

PRODUCERS: dict[str, Callable[[Path], Goldens]] = {
    "argv": argv_goldens,
    "config": config_goldens,
    "report": report_goldens,
    "classify": classify_goldens,
}


def _diff(old: bytes, new: bytes, name: str, limit: int = 40, width: int = 160) -> str:
    """Where the bytes first differ, then a unified diff (report.html has long lines)."""
    a, b = old.decode(errors="replace"), new.decode(errors="replace")
    at = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    line, col = a.count("\n", 0, at) + 1, at - a.rfind("\n", 0, at)
    out = [
        f"  first difference at line {line}, column {col}:",
        f"    golden: {a[max(0, at - 60) : at + 60]!r}",
        f"    now:    {b[max(0, at - 60) : at + 60]!r}",
    ]
    diff = difflib.unified_diff(
        a.splitlines(), b.splitlines(), f"tests/golden/{name}", "rendered now", lineterm=""
    )
    lines = [x if len(x) <= width else x[:width] + " ..." for x in diff]
    out += ["  " + x for x in lines[:limit]]
    if len(lines) > limit:
        out.append(f"  ... {len(lines) - limit} more diff lines")
    return "\n".join(out)


def check(goldens: Goldens) -> None:
    """Byte-compare each rendering with its golden; LAB_REGEN=1 rewrites them instead."""
    differ = []
    for name, text in sorted(goldens.items()):
        path = GOLDEN / name
        new = text.encode()
        if REGEN:
            if not path.is_file() or path.read_bytes() != new:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(new)
                warnings.warn(f"LAB_REGEN: rewrote tests/golden/{name}", stacklevel=1)
            continue
        if not path.is_file():
            differ.append(f"tests/golden/{name}: missing")
        elif path.read_bytes() != new:
            differ.append(f"tests/golden/{name} differs:\n{_diff(path.read_bytes(), new, name)}")
    if differ:
        pytest.fail(
            "\n".join(differ) + f"\n{len(differ)} golden file(s) differ. If the change is "
            f"intended, regenerate them with\n  {REGEN_CMD}\nand review `git diff tests/golden`.",
            pytrace=False,
        )


@pytest.mark.parametrize("group", PRODUCERS)
def test_golden(group: str, tmp_path: Path) -> None:
    check(PRODUCERS[group](tmp_path))


def _expected_names() -> set[str]:
    """Golden names known without rendering (from lab.toml and the corpus listing)."""
    cfg = config.load(REPO / "lab.toml")
    names = {f"argv/{a}.txt" for a in cfg.arches}
    names |= {f"config/{a}-{v.name}.txt" for a in cfg.arches for v in cfg.variants}
    names |= {f"report/{n}" for n in (*report.REPORTS, "text-summary.txt")}
    return names | {f"classify/{p.stem}.json" for p in CORPUS_FILES}


def test_no_stale_goldens() -> None:
    """A golden nothing renders any more would pass silently forever: none may exist."""
    found = {p.relative_to(GOLDEN).as_posix() for p in GOLDEN.rglob("*") if p.is_file()}
    stale = sorted(found - _expected_names() - {"README.md"})
    if REGEN:
        for name in stale:
            (GOLDEN / name).unlink()
            warnings.warn(f"LAB_REGEN: removed stale tests/golden/{name}", stacklevel=1)
        return
    assert not stale, f"golden files nothing renders: {stale}; remove them with {REGEN_CMD}"


@pytest.mark.parametrize("group", PRODUCERS)
def test_rendering_is_deterministic(group: str, tmp_path: Path) -> None:
    """Two renderings in different directories give the same bytes: nothing depends on
    time, the machine or the temporary path (else LAB_REGEN would churn the goldens)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = PRODUCERS[group](tmp_path / "a")
    second = PRODUCERS[group](tmp_path / "b")
    assert first.keys() == second.keys()
    changed = [k for k in first if first[k] != second[k]]
    assert not changed, f"renders differently twice: {changed}"


_DIGEST_ALL = """
import hashlib, sys, tempfile
from pathlib import Path
import test_golden as g
with tempfile.TemporaryDirectory() as d:
    for group, produce in g.PRODUCERS.items():
        (Path(d) / group).mkdir()
        for name, text in sorted(produce(Path(d) / group).items()):
            print(name, hashlib.sha256(text.encode()).hexdigest())
"""


def test_rendering_is_independent_of_the_hash_seed() -> None:
    """Set and dict-of-set orders change with PYTHONHASHSEED from one process to the
    next; two processes with different seeds must render the same goldens."""
    outs = []
    for seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "LAB_REGEN": "0"}
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO / "tests"), env.get("PYTHONPATH")])
        )
        done = subprocess.run(
            [sys.executable, "-c", _DIGEST_ALL], capture_output=True, text=True, env=env,
            cwd=REPO, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        outs.append(done.stdout)
    assert outs[0] == outs[1], "the goldens depend on PYTHONHASHSEED"
    assert len(outs[0].splitlines()) == len(_expected_names())


@pytest.mark.skipif(REGEN, reason="LAB_REGEN=1 rewrites instead of comparing")
def test_a_difference_names_the_golden_and_how_to_regenerate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "GOLDEN", tmp_path)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "summary.md").write_bytes(b"line one\nline two\n")
    with pytest.raises(pytest.fail.Exception) as failed:
        check({"report/summary.md": "line one\nline 2\n", "argv/x.txt": "new\n"})
    msg = str(failed.value)
    assert "tests/golden/report/summary.md differs" in msg
    assert "first difference at line 2, column 6" in msg
    assert "-line two" in msg and "+line 2" in msg
    assert "tests/golden/argv/x.txt: missing" in msg
    assert REGEN_CMD in msg
    # Bytes, not lines: a lost final newline is a difference too.
    with pytest.raises(pytest.fail.Exception):
        check({"report/summary.md": "line one\nline two"})
