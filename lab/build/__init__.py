"""Kernel builds: (source, patch series, config templates, arch, variant) -> kernel.

Planning is pure: `make_plan` turns resolved inputs into a cache key and a make
command line. Execution (`build`) happens at the edge: it prepares the patched
tree, configures a shared out-of-tree build directory, runs make and stores the
outputs in a content-addressed cache directory.

Variants that share source, patches, arch and toolchain share one build
directory, so switching variants recompiles only the objects whose CONFIG_
symbols changed (Kbuild's fixdep tracks symbols per object).
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab import __version__, cache, prereqs, proc
from lab.build import kconfig, patches, source, toolchain
from lab.config import ArchSpec, LabConfig, SourceSpec, Variant, templates
from lab.errors import InfraError, UserError
from lab.outcome import BuildStatus

if TYPE_CHECKING:  # annotations only: SSH lab hosts run the runner without rich
    from lab.progress import Reporter, Task

FORMAT = 1  # bump when the key recipe or the output layout changes


@dataclass(frozen=True)
class Fragment:
    template: str
    text: str


@dataclass(frozen=True)
class BuildPlan:
    """Everything that determines a kernel, resolved; `key` hashes it."""

    arch: ArchSpec
    variant: Variant
    fragments: tuple[Fragment, ...]
    source_identity: str
    source_description: str
    series: patches.Series
    toolchain: toolchain.Toolchain
    base: str
    timestamp: str
    make_vars: tuple[tuple[str, str], ...]
    jobs: int
    inputs: Mapping[str, Any] = field(hash=False)
    key: str
    tree_key: str
    source: SourceSpec | None = None  # the variant's kernel source; None: lab.toml's [source]

    @property
    def label(self) -> str:
        return f"{self.arch.name}/{self.variant.name}"

    def settings(self) -> dict[str, kconfig.Setting]:
        parsed: list[kconfig.Setting] = []
        for frag in self.fragments:
            parsed.extend(kconfig.parse_fragment(frag.text, frag.template))
        return kconfig.requested(parsed)

    def make_args(self, srctree: Path, objtree: Path) -> list[str]:
        """make's command line, without the target."""
        args = [
            prereqs.program("make"),
            "-C",
            str(srctree),
            f"O={objtree}",
            f"ARCH={self.arch.make_arch}",
            f"-j{self.jobs}",
            f"KBUILD_BUILD_TIMESTAMP={self.timestamp}",
            "KBUILD_BUILD_USER=lab",
            "KBUILD_BUILD_HOST=lab",
            "KBUILD_BUILD_VERSION=1",
        ]
        if self.arch.cross_compile:
            args.append(f"CROSS_COMPILE={self.arch.cross_compile}")
        args += [f"{k}={v}" for k, v in self.make_vars]
        return args


@dataclass(frozen=True)
class Kernel:
    """A finished build in the cache."""

    key: str
    dir: Path
    arch: str
    variant: str
    image: Path
    vmlinux: Path
    config: Path
    system_map: Path
    log: Path
    meta: Mapping[str, Any]
    cached: bool


@dataclass(frozen=True)
class BuildResult:
    """How building one planned kernel ended. A kernel that does not compile is a
    result (README: exit status 1 under `lab build`, infra cells under `lab matrix`),
    not an error of the lab, so it is data; bad input and lab trouble still raise."""

    status: BuildStatus
    kernel: Kernel | None  # set exactly when status.ok
    message: str = ""  # why it failed: the make exit, its first errors, the log's path

    @classmethod
    def of(cls, kernel: Kernel) -> BuildResult:
        return cls(BuildStatus.CACHED if kernel.cached else BuildStatus.BUILT, kernel)


def render_fragments(cfg: LabConfig, arch: ArchSpec, variant: Variant) -> tuple[Fragment, ...]:
    names = (*cfg.build.configs, *arch.configs, *variant.configs)
    ctx = variant.context(arch.name)
    return tuple(Fragment(n, templates.render_file(cfg.config_dir, n, ctx)) for n in names)


def _base_identity(cfg: LabConfig) -> str:
    base = cfg.build.base
    path = cfg.config_dir / base
    if path.is_file():
        return f"file:{cache.file_digest(path)}"
    return f"make:{base}"


def make_plan(
    cfg: LabConfig,
    arch: ArchSpec,
    variant: Variant,
    fragments: tuple[Fragment, ...],
    source_identity: str,
    source_description: str,
    series: patches.Series,
    tools: toolchain.Toolchain,
    base_identity: str,
    jobs: int,
    source_spec: SourceSpec | None = None,
) -> BuildPlan:
    """Pure: the cache key and build-tree key of a kernel from its resolved inputs."""
    tree_inputs = {
        "format": FORMAT,
        "source": source_identity,
        "series": series.digest,
        "make_arch": arch.make_arch,
        "cross_compile": arch.cross_compile,
        "toolchain": [tools.gcc_version, tools.ld_version],
        "make_vars": list(cfg.build.make_vars),
    }
    inputs = {
        **tree_inputs,
        "target": [arch.target, arch.image],
        "base": base_identity,
        "timestamp": cfg.build.timestamp,
        "fragments": [[f.template, cache.digest(f.text)] for f in fragments],
    }
    return BuildPlan(
        arch=arch,
        variant=variant,
        fragments=fragments,
        source_identity=source_identity,
        source_description=source_description,
        series=series,
        toolchain=tools,
        base=cfg.build.base,
        timestamp=cfg.build.timestamp,
        make_vars=cfg.build.make_vars,
        jobs=jobs,
        inputs=inputs,
        key=cache.digest_json(inputs)[:24],
        tree_key=f"{arch.name}-{cache.digest_json(tree_inputs)[:16]}",
        source=source_spec,
    )


def default_jobs(cfg: LabConfig) -> int:
    if cfg.build.jobs:
        return cfg.build.jobs
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def plan(
    cfg: LabConfig,
    arch: ArchSpec,
    variant: Variant,
    jobs: int = 0,
    log: Callable[[str], None] = lambda _m: None,
) -> BuildPlan:
    """Resolve inputs (cheap: no extraction, no make) and plan the build."""
    fragments = render_fragments(cfg, arch, variant)
    for frag in fragments:
        kconfig.parse_fragment(frag.text, str(cfg.config_dir / frag.template))
    tools = toolchain.detect(arch)
    spec = cfg.source_for(variant)
    identity, description = source.identify(spec, cfg.cache_dir, log)
    series = patches.load_series(cfg.patches_dir, variant.series)
    return make_plan(
        cfg,
        arch,
        variant,
        fragments,
        identity,
        description,
        series,
        tools,
        _base_identity(cfg),
        jobs or default_jobs(cfg),
        spec,
    )


def kernel_dir(cfg: LabConfig, key: str) -> Path:
    return cfg.cache_dir / "kernels" / key


def lookup(cfg: LabConfig, p: BuildPlan) -> Kernel | None:
    d = kernel_dir(cfg, p.key)
    meta_file = d / "meta.json"
    if not meta_file.is_file():
        return None
    try:
        meta = cache.read_json(meta_file)
    except ValueError:
        return None
    return _kernel_from(d, meta, cached=True)


def load_kernel(directory: Path) -> Kernel:
    return _kernel_from(directory, cache.read_json(directory / "meta.json"), cached=True)


def _kernel_from(d: Path, meta: Mapping[str, Any], cached: bool) -> Kernel:
    return Kernel(
        key=meta["key"],
        dir=d,
        arch=meta["arch"],
        variant=meta["variant"],
        image=d / meta["image"],
        vmlinux=d / "vmlinux",
        config=d / "config",
        system_map=d / "System.map",
        log=d / "build.log",
        meta=meta,
        cached=cached,
    )


# --- configuring ------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigResult:
    base: str  # the base .config text (e.g. tinyconfig)
    merged: str  # base + fragments, before olddefconfig
    final: str  # after olddefconfig
    settings: Mapping[str, kconfig.Setting]


def _srcarch(arch: ArchSpec) -> str:
    parts = Path(arch.image).parts
    return parts[1] if len(parts) > 2 and parts[0] == "arch" else arch.make_arch


def _run_make(
    p: BuildPlan,
    srctree: Path,
    objtree: Path,
    targets: list[str],
    log_file: Path,
    on_line: Callable[[str], None] = lambda _l: None,
) -> int:
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    with open(log_file, "a") as log:
        log.write(f"$ {shlex.join(p.make_args(srctree, objtree) + targets)}\n")
        log.flush()
        return proc.run_streaming(p.make_args(srctree, objtree) + targets, on_line, log, env=env)


def configure(
    cfg: LabConfig, p: BuildPlan, srctree: Path, objtree: Path, log_file: Path
) -> ConfigResult:
    """Write the variant's .config into objtree and verify the requested symbols survived."""
    base_cache = objtree / ".lab" / "base.config"
    base_file = cfg.config_dir / p.base
    if base_file.is_file():
        base = base_file.read_text()
    elif base_cache.is_file():
        base = base_cache.read_text()
    else:
        if _run_make(p, srctree, objtree, [p.base], log_file) != 0:
            raise UserError(
                f"{p.label}: 'make {p.base}' failed (lab.toml [build] base: a make target "
                f"such as tinyconfig or a file under {cfg.config_dir}); see {log_file}"
            )
        base = (objtree / ".config").read_text()
        cache.write_atomic(base_cache, base)
    settings = p.settings()
    merged = kconfig.merge(base, settings.values())
    (objtree / ".config").write_text(merged)
    if _run_make(p, srctree, objtree, ["olddefconfig"], log_file) != 0:
        raise UserError(f"{p.label}: make olddefconfig failed; see {log_file}")
    final = (objtree / ".config").read_text()
    dropped = kconfig.verify(settings, kconfig.parse_config(final))
    if dropped:
        raise UserError(_dropped_message(p, srctree, dropped, kconfig.parse_config(final)))
    return ConfigResult(base, merged, final, settings)


def _dropped_message(
    p: BuildPlan, srctree: Path, dropped: list[kconfig.Dropped], final: Mapping[str, str]
) -> str:
    first = dropped[0]
    s = first.setting
    deps = kconfig.find_dependencies(srctree, _srcarch(p.arch), s.symbol.removeprefix("CONFIG_"))
    why = "; ".join(kconfig.explain(d, final) for d in deps) or "no dependency found in Kconfig"
    more = ""
    if len(dropped) > 1:
        more = (
            f" (and {len(dropped) - 1} more: "
            + ", ".join(f"{d.setting.symbol}={d.setting.value}->{d.final}" for d in dropped[1:6])
            + ")"
        )
    return (
        f"{p.label}: config symbol {s.line()} requested at {s.source} was dropped by "
        f"olddefconfig (final value: {first.final}); {why}{more}"
    )


# --- building -----------------------------------------------------------------------

_COMPILE = re.compile(r"^\s+(CC|AS|CPP|HOSTCC)\s")
_LINK = re.compile(r"^\s+LD\s+vmlinux$")
_ERROR = re.compile(r"(?:\berror:|\bError \d+|undefined reference|No rule to make target)")


def first_errors(log_text: str, limit: int = 5) -> list[str]:
    """The compiler's error lines, else make's, for a one-glance failure report."""
    lines = log_text.splitlines()
    compiler = [line for line in lines if re.search(r"(?:fatal )?error:", line)]
    picked = compiler or [line for line in lines if _ERROR.search(line)]
    return [line.strip() for line in picked[:limit]]


def _tree_paths(cfg: LabConfig, p: BuildPlan) -> tuple[Path, Path]:
    objtree = cfg.cache_dir / "trees" / p.tree_key
    return objtree, cfg.cache_dir / "locks" / f"tree-{p.tree_key}.lock"


def build(cfg: LabConfig, p: BuildPlan, task: Task, force: bool = False) -> BuildResult:
    """Build the planned kernel (or take it from the cache)."""
    if not force and (hit := lookup(cfg, p)) is not None:
        return BuildResult.of(hit)
    durations: dict[str, float] = {}
    t0 = time.monotonic()

    def log(msg: str) -> None:
        task.phase(msg)

    task.phase("source")
    src = source.prepare(p.source or cfg.source, cfg.cache_dir, log)
    if src.identity != p.source_identity:
        raise InfraError(f"{p.label}: source changed while building ({src.identity})")
    srctree = patches.apply(src, p.series, cfg.cache_dir, log)
    durations["source"] = time.monotonic() - t0

    objtree, lock = _tree_paths(cfg, p)
    objtree.mkdir(parents=True, exist_ok=True)
    task.phase("waiting for build tree")
    with cache.locked(lock):
        if not force and (hit := lookup(cfg, p)) is not None:
            return BuildResult.of(hit)
        log_file = objtree / ".lab" / "build.log"
        log_file.parent.mkdir(exist_ok=True)
        log_file.write_text(f"# lab {__version__} build of {p.label} key {p.key}\n")
        t1 = time.monotonic()
        task.phase("config")
        conf = configure(cfg, p, srctree, objtree, log_file)
        durations["config"] = time.monotonic() - t1

        t2 = time.monotonic()
        task.phase("make")
        compiled = 0

        def on_line(line: str) -> None:
            nonlocal compiled
            if _COMPILE.match(line):
                compiled += 1
                task.advance("objects")
            elif _LINK.match(line):
                task.phase("link")

        rc = _run_make(p, srctree, objtree, [p.arch.target], log_file, on_line)
        durations["make"] = time.monotonic() - t2
        if rc != 0:
            errors = first_errors(log_file.read_text(errors="replace"))
            shown = "\n  ".join(errors) if errors else "(no error line found)"
            return BuildResult(
                BuildStatus.BUILD_FAILED,
                None,
                f"{p.label}: build failed (make exit {rc}); first errors:\n  {shown}\n"
                f"full log: {log_file}",
            )
        task.phase("collect")
        kernel = _collect(cfg, p, srctree, objtree, conf, log_file, durations, compiled, t0)
    return BuildResult.of(kernel)


def _collect(
    cfg: LabConfig,
    p: BuildPlan,
    srctree: Path,
    objtree: Path,
    conf: ConfigResult,
    log_file: Path,
    durations: dict[str, float],
    compiled: int,
    t0: float,
) -> Kernel:
    final = kernel_dir(cfg, p.key)
    image_name = Path(p.arch.image).name
    with cache.staging_dir(final) as tmp:
        for src_rel, name in (
            (p.arch.image, image_name),
            ("vmlinux", "vmlinux"),
            (".config", "config"),
            ("System.map", "System.map"),
        ):
            shutil.copy2(objtree / src_rel, tmp / name)
        shutil.copy2(log_file, tmp / "build.log")
        (tmp / "fragment.config").write_text(
            "".join(f"# --- {f.template}\n{f.text}" for f in p.fragments)
        )
        (tmp / "base.config").write_text(conf.base)
        durations["total"] = time.monotonic() - t0
        make_cmd = shlex.join([*p.make_args(srctree, objtree), p.arch.target])
        meta = {
            "key": p.key,
            "format": FORMAT,
            "lab_version": __version__,
            "arch": p.arch.name,
            "variant": p.variant.name,
            "family": p.variant.family,
            "params": dict(p.variant.params),
            "image": image_name,
            "image_sha256": cache.file_digest(tmp / image_name),
            "config_sha256": cache.file_digest(tmp / "config"),
            "source": {"identity": p.source_identity, "description": p.source_description},
            "series": p.series.describe(),
            # Per named series: quilt or mbox, its version and base-commit: trailer.
            "series_sources": p.series.identity(),
            "fragments": [
                {"template": f.template, "sha256": cache.digest(f.text)} for f in p.fragments
            ],
            "toolchain": p.toolchain.describe(),
            "make_vars": dict(p.make_vars),
            "inputs": dict(p.inputs),
            "build_tree": str(objtree),
            "objects_compiled": compiled,
            "durations": {k: round(v, 2) for k, v in durations.items()},
            "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": platform.node(),
            "reproducer": f"lab --config {cfg.file} build --arch {p.arch.name} "
            f"--variant {p.variant.name}",
            "make_command": make_cmd,
        }
        cache.write_json(tmp / "meta.json", meta)
    return _kernel_from(final, meta, cached=False)


def show_config(cfg: LabConfig, p: BuildPlan, reporter: Reporter) -> ConfigResult:
    """Configure (without building) and return base, merged and final config."""
    task = reporter.task(p.label)
    src = source.prepare(p.source or cfg.source, cfg.cache_dir, task.phase)
    srctree = patches.apply(src, p.series, cfg.cache_dir, task.phase)
    objtree, lock = _tree_paths(cfg, p)
    objtree.mkdir(parents=True, exist_ok=True)
    with cache.locked(lock):
        log_file = objtree / ".lab" / "config.log"
        log_file.parent.mkdir(exist_ok=True)
        log_file.write_text("")
        task.phase("config")
        result = configure(cfg, p, srctree, objtree, log_file)
    task.finish("configured")
    return result


def check_host_tools() -> None:
    """Fail early, in one line, when a build prerequisite is missing (doctor's rows)."""
    prereqs.require(prereqs.build_host(), "build kernels")
