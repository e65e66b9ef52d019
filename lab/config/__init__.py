"""lab.toml: parsed with tomllib into frozen dataclasses.

Knows nothing about QEMU processes, make or the cache: it only turns a file into
validated data. Every error names the file, the key path and what would be valid.
See docs/lab-toml.md for the reference.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import jinja2.meta

from lab.config import known, templates, variants
from lab.config.tomlread import Scalar, Table
from lab.errors import UserError

SOURCE_KINDS = ("debian", "tarball", "tree", "git")
ACCELS = ("auto", "kvm", "tcg")

# Upper bounds: far above any real lab, low enough that a typo (an extra zero or
# three) is an error here rather than a QEMU failure in every cell or a hang.
MAX_FILE_BYTES = 4 << 20
MAX_MEMORY_MIB = 1 << 20  # 1 TiB
MAX_SMP = 1024
MAX_JOBS = 4096
MAX_SECONDS = 86400.0  # one day
# A family's axis product is counted before it is built: 12 axes of 10 values would
# otherwise be materialised (10**12 dicts) before any exclude could remove them.
MAX_COMBINATIONS = 10_000
NAME_RULE = "use letters, digits, '-', '_', '.', '+', not starting with '-', not '.' or '..'"


def valid_name(name: str) -> bool:
    """Arch and variant names become path components, CLI arguments and glob targets."""
    return (
        bool(name)
        and not name.startswith("-")
        and name not in (".", "..")
        and not any(
            c.isspace() or c in "/\\,*?[]" or unicodedata.category(c) in ("Cc", "Cf") for c in name
        )
    )


def check_cmdline(value: str, where: str) -> str:
    """A kernel command line travels as one argv element: NUL cannot, other controls must not.

    Whitespace (newlines, tabs) is fine: the command line is split into words later.
    """
    if any(unicodedata.category(c) == "Cc" for c in " ".join(value.split())):
        raise UserError(
            f"{where}: {value!r} contains a control character; "
            "a kernel command line is printable text"
        )
    return value


@dataclass(frozen=True)
class SourceSpec:
    """Where the kernel source comes from. The extracted tree is kept pristine."""

    kind: str  # one of SOURCE_KINDS
    path: str = ""  # debian/tarball: the tarball; tree: the directory
    package: str = ""  # debian: the package that provides `path`
    url: str = ""  # git
    ref: str = ""  # git: branch, tag or commit


@dataclass(frozen=True)
class QemuSpec:
    binary: str
    package: str  # the Debian package that provides `binary`, for error messages
    machine: str
    cpu: str
    console: str  # the guest kernel's console device, e.g. ttyS0
    memory_mib: int
    smp: int
    accel: str  # auto | kvm | tcg
    extra_args: tuple[str, ...]


@dataclass(frozen=True)
class ArchSpec:
    name: str  # the lab's name for it: x86_64, arm64
    make_arch: str  # ARCH=
    cross_compile: str  # CROSS_COMPILE=, "" for native
    compiler_package: str  # the Debian package that provides the compiler
    target: str  # make target: bzImage, Image.gz
    image: str  # the target's path in the build tree
    deb_arch: str  # Debian architecture of the guest userspace
    configs: tuple[str, ...]  # config templates for this arch
    cmdline: str  # extra kernel command line for this arch
    qemu: QemuSpec


@dataclass(frozen=True)
class BuildSpec:
    base: str  # a make target producing the base .config (tinyconfig) or a file path
    configs: tuple[str, ...]  # config templates applied to every kernel
    make_vars: tuple[tuple[str, str], ...]
    timestamp: str  # KBUILD_BUILD_TIMESTAMP, fixed for reproducible images
    jobs: int  # make -j; 0 means the number of CPUs


@dataclass(frozen=True)
class BootSpec:
    ready_timeout: float  # seconds from QEMU start to the guest's ready marker
    shutdown_timeout: float  # seconds for an orderly power-off before QEMU is killed
    kvm_probe_timeout: float  # seconds the KVM probe may take before TCG is chosen
    cmdline: str  # kernel command line additions for every boot


@dataclass(frozen=True)
class ImageSpec:
    """The guest image recipe's knobs (the rest is in lab/image/ and images/)."""

    extra_packages: tuple[str, ...]  # Debian packages added to busybox + Python
    # (URI, suites, components); empty: the host's apt sources for the guest's release
    sources: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]
    keyring: str  # absolute path; "" for Debian's archive keyring


@dataclass(frozen=True)
class Variant:
    """One kernel flavour: template parameters, patch series and boot additions."""

    name: str
    family: str
    description: str
    params: Mapping[str, Scalar]
    series: tuple[str, ...]
    configs: tuple[str, ...]
    cmdline: str
    banner: str = ""  # k=v words the kernel's variant banner must show ("" = no check)
    source: str = ""  # a [sources.NAME] of lab.toml; "" = the default [source]
    # The family's axes its `series` templates name (`secretmem-{{ version }}`): values
    # of these are versions of a series, which the report compares side by side.
    series_axes: tuple[str, ...] = ()

    def context(self, arch: str) -> dict[str, Scalar]:
        """Variables a config template sees."""
        return {**self.params, "arch": arch, "variant": self.name}


@dataclass(frozen=True)
class LabConfig:
    file: Path
    root: Path  # the directory holding lab.toml; relative paths start here
    cache_dir: Path
    results_dir: Path
    kernels_dir: Path
    images_dir: Path
    testcases_dir: Path
    jobs: int
    source: SourceSpec
    build: BuildSpec
    boot: BootSpec
    image: ImageSpec
    arches: Mapping[str, ArchSpec]
    variants: tuple[Variant, ...]
    extra: Mapping[str, object] = field(default_factory=dict)
    # Named kernel sources ([sources.NAME]); a family picks one with `source = "NAME"`.
    sources: Mapping[str, SourceSpec] = field(default_factory=dict)
    # [[known_issues]]: understood disagreements with an expectation (lab/config/known.py)
    known_issues: tuple[known.KnownIssue, ...] = ()

    def source_for(self, variant: Variant) -> SourceSpec:
        """The kernel source a variant builds on (validated when lab.toml was loaded)."""
        return self.sources[variant.source] if variant.source else self.source

    @property
    def config_dir(self) -> Path:
        return self.kernels_dir / "config"

    @property
    def patches_dir(self) -> Path:
        return self.kernels_dir / "patches"

    def arch(self, name: str) -> ArchSpec:
        if name not in self.arches:
            raise UserError(
                f"{self.file}: unknown arch {name!r}; valid: {', '.join(self.arches) or '(none)'}"
            )
        return self.arches[name]

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        valid = ", ".join(v.name for v in self.variants) or "(none)"
        raise UserError(f"{self.file}: unknown variant {name!r}; valid: {valid}")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lab"


def load(file: Path) -> LabConfig:
    """Read and validate lab.toml."""
    try:
        with file.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise UserError(
            f"{file}: not found (pass --config PATH or run from the lab directory)"
        ) from None
    except OSError as exc:
        raise UserError(f"{file}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise UserError(f"{file}: larger than {MAX_FILE_BYTES >> 20} MiB; not a lab.toml")
    try:
        data = tomllib.loads(raw.decode())
    except UnicodeDecodeError as exc:
        raise UserError(f"{file}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{file}: malformed TOML: {exc}") from None
    except RecursionError:
        raise UserError(f"{file}: malformed TOML: arrays or tables nested too deeply") from None
    return parse(data, file)


def _check_values(data: dict[str, object], file: Path) -> None:
    """Every number finite, no NUL in any string, wherever it is in the file.

    NaN compares false with everything (`nan <= 0` passes a range check) and inf
    never times out; a NUL cannot go into a path or an argv element.
    """
    stack: list[tuple[str, object]] = list(data.items())
    while stack:
        key, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{file}: {key}: {value} is not a finite number")
        if isinstance(value, str) and "\0" in value:
            raise UserError(f"{file}: {key}: {value!r} contains a control character (NUL)")
        if isinstance(value, dict):
            stack += [(f"{key}.{k}", v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(f"{key}[{i}]", v) for i, v in enumerate(value)]


def parse(data: dict[str, object], file: Path) -> LabConfig:
    _check_values(data, file)
    top = Table(file, "", dict(data))
    root = file.resolve().parent

    lab = top.table("lab")
    # LAB_CACHE_DIR wins so CI and tests can point every run at one shared cache.
    configured_cache = lab.string("cache_dir", "")
    cache_value = os.environ.get("LAB_CACHE_DIR") or configured_cache
    cache_dir = _path(root, cache_value) if cache_value else default_cache_dir()
    results_dir = _path(root, lab.string("results_dir", "results"))
    kernels_dir = _path(root, lab.string("kernels_dir", "kernels"))
    images_dir = _path(root, lab.string("images_dir", "images"))
    testcases_dir = _path(root, lab.string("testcases_dir", "testcases"))
    jobs = lab.integer("jobs", 0, minimum=0, maximum=MAX_JOBS)
    lab.done()

    sources_t = top.table("sources")
    sources = {name: _source(t) for name, t in sources_t.subtables()}
    sources_t.done()
    for name in sources:
        if not valid_name(name):
            sources_t.fail(f"[sources.NAME]: source name {name!r} is not valid; {NAME_RULE}")
    # [source] is the default; with [sources.NAME] tables only, the first one is.
    if sources and not top.has("source"):
        source = next(iter(sources.values()))
    else:
        source = _source(top.table("source", required=True))
    build = _build(top.table("build", required=True))
    boot = _boot(top.table("boot"))
    image = _image(top.table("image"), root)

    arch_table = top.table("arch", required=True)
    arches = {name: _arch(name, t) for name, t in arch_table.subtables()}
    for name in arches:
        if not valid_name(name):
            arch_table.fail(f"[arch.NAME]: arch name {name!r} is not valid; {NAME_RULE}")
    if not arches:
        arch_table.fail(f"{arch_table.path}: declare at least one [arch.NAME] table")

    vtable = top.table("variants", required=True)
    all_variants: list[Variant] = []
    for family, t in vtable.subtables():
        all_variants.extend(_family(family, t, root))
    for v in all_variants:
        if v.source and v.source not in sources:
            vtable.fail(
                f"[variants.{v.family}] source: {v.source!r} (variant {v.name}) is not a "
                f"[sources.NAME] table; valid: {', '.join(sources) or '(none declared)'}"
            )
    seen: dict[str, str] = {}
    for v in all_variants:
        if v.name in seen:
            vtable.fail(
                f"[variants.{v.family}]: variant name {v.name!r} is produced twice "
                f"(also by [variants.{seen[v.name]}]); make the name template distinguish them"
            )
        seen[v.name] = v.family
    if not all_variants:
        vtable.fail("[variants]: declare at least one variant family [variants.NAME]")

    # Sections owned by later stages are validated by their own loaders; keep them raw.
    extra = {
        k: top.raw(k)
        for k in ("image", "testcases", "matrix", "hosts", "failure_mode")
        if top.has(k)
    }
    issues = known.parse(top.raw("known_issues") if top.has("known_issues") else None, file)
    top.done()
    return LabConfig(
        file=file,
        root=root,
        cache_dir=cache_dir,
        results_dir=results_dir,
        kernels_dir=kernels_dir,
        images_dir=images_dir,
        testcases_dir=testcases_dir,
        jobs=jobs,
        source=source,
        build=build,
        boot=boot,
        image=image,
        arches=arches,
        variants=tuple(all_variants),
        extra=extra,
        sources=sources,
        known_issues=tuple(issues),
    )


def _path(root: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else root / p


def _source(t: Table) -> SourceSpec:
    kind = t.string("kind", "debian", choices=SOURCE_KINDS)
    if kind == "debian":
        package = t.string("package", "linux-source-6.1")
        path = t.string("path", f"/usr/src/{package}.tar.xz")
        spec = SourceSpec(kind, path=path, package=package)
    elif kind in ("tarball", "tree"):
        spec = SourceSpec(kind, path=t.string("path"))
    else:
        spec = SourceSpec(kind, url=t.string("url"), ref=t.string("ref"))
    t.done()
    return spec


def _build(t: Table) -> BuildSpec:
    base = t.string("base", "tinyconfig")
    configs = t.strings("configs", ())
    make_vars = t.scalar_map("make_vars")
    timestamp = t.string("timestamp", "Thu Jan 21 12:27:23 UTC 2021")
    jobs = t.integer("jobs", 0, minimum=0, maximum=MAX_JOBS)
    t.done()
    return BuildSpec(
        base=base,
        configs=configs,
        make_vars=tuple(sorted((k, str(v)) for k, v in make_vars.items())),
        timestamp=timestamp,
        jobs=jobs,
    )


def _seconds(t: Table, name: str, default: float) -> float:
    value = t.raw(name, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        t.fail_key(name, f"expected a positive, finite number of seconds, got {value!r}")
    if value > MAX_SECONDS:
        t.fail_key(name, f"{value!r} is too large; must be <= {MAX_SECONDS:g} seconds")
    return float(value)


def _boot(t: Table) -> BootSpec:
    spec = BootSpec(
        ready_timeout=_seconds(t, "ready_timeout", 60.0),
        shutdown_timeout=_seconds(t, "shutdown_timeout", 15.0),
        kvm_probe_timeout=_seconds(t, "kvm_probe_timeout", 8.0),
        cmdline=check_cmdline(t.string("cmdline", ""), f"{t.file}: {t.key('cmdline')}"),
    )
    t.done()
    return spec


_URI = re.compile(r"[a-z][a-z0-9+.-]*:\S+")
_WORD = re.compile(r"[^\s\[\]#]+")
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")


def _words(
    t: Table, name: str, pattern: re.Pattern[str], what: str, default: tuple[str, ...] | None
) -> tuple[str, ...]:
    values = t.strings(name) if default is None else t.strings(name, default)
    if not values:
        t.fail_key(name, f"expected at least one {what}")
    for v in values:
        if not pattern.fullmatch(v):
            t.fail_key(name, f"{v!r} is not a valid {what}")
    return values


def _image(t: Table, root: Path) -> ImageSpec:
    sources = []
    for entry in t.table_list("sources"):
        uri = entry.string("uri")
        if not _URI.fullmatch(uri):
            entry.fail_key(
                "uri", f"{uri!r} is not an apt URI (e.g. http://HOST/debian, file:/srv/mirror)"
            )
        suites = _words(entry, "suites", _WORD, "suite (e.g. bookworm)", None)
        components = _words(entry, "components", _WORD, "component (e.g. main)", ("main",))
        sources.append((uri, suites, components))
        entry.done()
    keyring = t.string("keyring", "")
    if keyring.strip() != keyring or (t.has("keyring") and not keyring):
        t.fail_key("keyring", f"{keyring!r} is not a keyring file path")
    extra = t.strings("extra_packages", ())
    for name in extra:
        if not _PACKAGE.fullmatch(name):
            t.fail_key("extra_packages", f"{name!r} is not a Debian package name")
    spec = ImageSpec(
        extra_packages=extra,
        sources=tuple(sources),
        keyring=str(_path(root, keyring)) if keyring else "",
    )
    t.done()
    return spec


def _arch(name: str, t: Table) -> ArchSpec:
    q = t.table("qemu", required=True)
    qemu = QemuSpec(
        binary=q.string("binary"),
        package=q.string("package", ""),
        machine=q.string("machine"),
        cpu=q.string("cpu", ""),
        console=q.string("console"),
        memory_mib=q.integer("memory_mib", 512, minimum=64, maximum=MAX_MEMORY_MIB),
        smp=q.integer("smp", 2, minimum=1, maximum=MAX_SMP),
        accel=q.string("accel", "auto", choices=ACCELS),
        extra_args=q.strings("extra_args", ()),
    )
    q.done()
    spec = ArchSpec(
        name=name,
        make_arch=t.string("make_arch"),
        cross_compile=t.string("cross_compile", ""),
        compiler_package=t.string("compiler_package", ""),
        target=t.string("target"),
        image=t.string("image"),
        deb_arch=t.string("deb_arch"),
        configs=t.strings("configs", ()),
        cmdline=check_cmdline(t.string("cmdline", ""), f"{t.file}: {t.key('cmdline')}"),
        qemu=qemu,
    )
    t.done()
    return spec


def _scalar_list_map(t: Table, name: str) -> dict[str, list[Scalar]]:
    axes_t = t.table(name)
    axes: dict[str, list[Scalar]] = {}
    for axis in axes_t.names():
        values = axes_t.raw(axis)
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, str | int | bool | float) for v in values)
        ):
            axes_t.fail_key(axis, "expected a non-empty array of strings, numbers or booleans")
        axes[axis] = values
    axes_t.done()
    return axes


def _entries(t: Table, name: str) -> list[dict[str, Scalar]]:
    out = []
    for entry in t.table_list(name):
        values: dict[str, Scalar] = {}
        for k in entry.names():
            v = entry.raw(k)
            if not isinstance(v, str | int | bool | float):
                entry.fail_key(k, "expected a string, number or boolean")
            values[k] = v
        entry.done()
        out.append(values)
    return out


def _series(
    entries: tuple[str, ...], render: Callable[[str, str], str], where: str
) -> tuple[str, ...]:
    """A family's series, each a template over its parameters: `secretmem-{{ version }}`
    makes versions of a series an axis. An entry that renders empty is left out (a
    series applied to some combinations only); each other is a name under
    kernels/patches/."""
    out = []
    for i, entry in enumerate(entries):
        name = render(f"series[{i}]", entry).strip() if "{" in entry else entry
        if not name:
            continue
        if name in (".", "..") or any(c in name for c in "/\\") or not valid_name(name):
            raise UserError(
                f"{where}: {name!r} is not a series name under kernels/patches/; {NAME_RULE}"
            )
        out.append(name)
    return tuple(out)


def series_axes(entries: tuple[str, ...], axes: Mapping[str, object]) -> tuple[str, ...]:
    """The axes (in lab.toml order) that a family's series templates use: parsed, not
    rendered, so an axis counts although some of its values render the entry empty."""
    env = jinja2.Environment()
    used: set[str] = set()
    for entry in entries:
        if "{" in entry:
            try:
                used |= jinja2.meta.find_undeclared_variables(env.parse(entry))
            except jinja2.TemplateSyntaxError:
                continue  # rendering reports it, naming the entry
    return tuple(a for a in axes if a in used)


def _family(family: str, t: Table, root: Path) -> list[Variant]:
    where = f"{t.file}: [{t.path}]"
    axes = _scalar_list_map(t, "axes")
    include = _entries(t, "include")
    exclude = _entries(t, "exclude")
    constants = t.scalar_map("params")
    default_name = family + "".join("-{{ " + a + " }}" for a in axes) if axes else family
    name_tpl = t.string("name", default_name)
    desc_tpl = t.string("description", "")
    cmdline_tpl = t.string("cmdline", "")
    banner_tpl = t.string("banner", "")
    source_tpl = t.string("source", "")
    series = t.strings("series", ())
    configs = t.strings("configs", ())
    t.done()

    product = math.prod(len(v) for v in axes.values())
    if product > MAX_COMBINATIONS:
        raise UserError(
            f"{where} axes: {' x '.join(str(len(v)) for v in axes.values())} = {product} "
            f"combinations; at most {MAX_COMBINATIONS} (split the family)"
        )
    expanded = variants.expand(axes, include, exclude, constants)
    if not expanded:
        raise UserError(
            f"{where}: every combination is excluded ({len(exclude)} exclude entries) "
            "and no include adds one"
        )
    version_axes = series_axes(series, axes)
    out = []
    for params in expanded:
        ctx = {**params, "family": family}
        combo = ", ".join(f"{k}={v!r}" for k, v in params.items())

        def render(
            key: str, template: str, ctx: dict[str, Scalar] = ctx, combo: str = combo
        ) -> str:
            return templates.render_string(template, ctx, f"{where} {key} (for {combo})", root)

        name = render("name", name_tpl).strip()
        if not valid_name(name):
            raise UserError(
                f"{where} name: {name!r} (for {combo}) is not a valid variant name; {NAME_RULE}"
            )
        ctx["variant"] = name
        out.append(
            Variant(
                name=name,
                family=family,
                description=render("description", desc_tpl).strip(),
                params=params,
                series=_series(series, render, f"{where} series (for {combo})"),
                configs=configs,
                cmdline=check_cmdline(
                    " ".join(render("cmdline", cmdline_tpl).split()),
                    f"{where} cmdline (for {combo})",
                ),
                banner=" ".join(render("banner", banner_tpl).split()),
                source=render("source", source_tpl).strip() if source_tpl else "",
                series_axes=version_axes,
            )
        )
    return out
