"""A cell as a job: everything needed to run it on any host with QEMU (CellJob), what it
boots and carries (Inputs, built before scheduling: Artifacts), and prepare_cell, which
only reads files."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lab import provenance
from lab.build import Kernel
from lab.config import ArchSpec, BootSpec, LabConfig, QemuSpec
from lab.errors import InfraError, LabError
from lab.image import BaseImage
from lab.run import matrix, needs
from lab.run.cell import Cell, expected_banner, job_for, reproducer
from lab.vm import boot
from lab.vm.boot import Files, LaunchRequest

MARGIN = 30.0  # seconds the host waits beyond a test case's own (in-guest) deadline


@dataclass(frozen=True)
class CellJob:
    """Everything needed to run one cell on any host with QEMU: no lab.toml, no builds.

    The kernel image, base image and overlay travel beside it as files."""

    record: Mapping[str, Any]  # cell.json fields known before the run
    arch: ArchSpec
    cmdline: str
    memory_mib: int
    smp: int
    agent_job: Mapping[str, Any]
    banner: Mapping[str, str] | None
    boot: BootSpec  # the boot timeouts
    test_timeout: float  # the host's deadline for the test phase

    def to_json(self) -> dict[str, Any]:
        """JSON-safe (what travels to a lab host); ArchSpec and BootSpec as tables."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> CellJob:
        """to_json's output read back (on a lab host: from the controller's request).
        Raises ValueError naming what is missing or of the wrong shape."""
        if not isinstance(data, dict):
            raise ValueError(f"the job is a JSON {type(data).__name__}, not an object")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data]
        if missing:
            raise ValueError(f"the job has no {', '.join(missing)}")
        try:
            fields = {f.name: data[f.name] for f in dataclasses.fields(cls)}
            fields["arch"] = arch_from_json(data["arch"])
            fields["boot"] = BootSpec(**data["boot"])
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise ValueError(f"the job's arch or boot table is malformed: {exc}") from None
        return cls(**fields)

    def launch_request(
        self, kernel_image: Path, base_image: Path, files: Files, cache_root: Path
    ) -> LaunchRequest:
        """The boot of this job, wherever it runs (the images are the host's copies)."""
        return LaunchRequest(
            arch=self.arch,
            kernel_image=kernel_image,
            base_image=base_image,
            agent_job=self.agent_job,
            cmdline=self.cmdline,
            memory_mib=self.memory_mib,
            smp=self.smp,
            timeouts=self.boot,
            cache_root=cache_root,
            files=files,
        )


@dataclass(frozen=True)
class Artifacts:
    """What a matrix run built before scheduling its cells: kernels by label, base images
    by arch, test-case needs by (arch, need), and the needs that did not build."""

    kernels: Mapping[str, Kernel]
    images: Mapping[str, BaseImage]
    binaries: Mapping[needs.Need, Path] = dataclasses.field(default_factory=dict)
    unmet: Mapping[needs.Need, LabError] = dataclasses.field(default_factory=dict)

    def ready(self, p: matrix.Planned) -> bool:
        """Everything the planned cell needs was built."""
        return p.kernel in self.kernels and needs.failure(p.cell, self.unmet) is None

    def inputs(self, p: matrix.Planned) -> Inputs:
        """What the planned cell boots and carries (it must be ready())."""
        arch = p.cell.arch.name
        return Inputs(
            self.kernels[p.kernel], self.images[arch], needs.binaries(p.cell, self.binaries)
        )


@dataclass(frozen=True)
class Inputs:
    """What a cell boots and carries, built before the cell is scheduled: its kernel,
    the base image of its arch and the binaries its test case needs (need -> file)."""

    kernel: Kernel
    base: BaseImage
    binaries: Mapping[str, Path] = dataclasses.field(default_factory=dict)


def arch_from_json(data: Mapping[str, Any]) -> ArchSpec:
    """An ArchSpec from dataclasses.asdict() output (after a JSON round trip)."""
    a = dict(data)
    q = dict(a.pop("qemu"))
    q["extra_args"] = tuple(q["extra_args"])
    a["configs"] = tuple(a["configs"])
    return ArchSpec(**a, qemu=QemuSpec(**q))


def guest_files(cell: Cell, binaries: Mapping[str, Path]) -> dict[str, tuple[bytes, int]]:
    """The overlay files of a cell: the guest library, its test case and the binaries
    its needs resolved to (lab.run.needs built them before scheduling)."""
    lib = resources.files("lab.guest").joinpath("labguest.py").read_bytes()
    files = {
        "lab/lib/labguest.py": (lib, 0o644),
        f"lab/testcases/{cell.testcase.name}.py": (cell.testcase.path.read_bytes(), 0o644),
    }
    for need in cell.testcase.needs:
        binary = binaries.get(need)
        if binary is None:  # needs.resolve runs first; a cell it failed is an infra cell
            raise InfraError(f"{cell.id}: {need} was not built before the cell was prepared")
        files[f"lab/bin/{binary.name}"] = (binary.read_bytes(), 0o755)
    return files


def prepare_cell(
    cfg: LabConfig,
    cell: Cell,
    inputs: Inputs,
    run_cell_id: str = "",
    repeat: int = 1,
) -> tuple[CellJob, dict[str, tuple[bytes, int]]]:
    """The job and the guest files of a cell: reads files, builds and starts nothing."""
    kernel, base = inputs.kernel, inputs.base
    files = guest_files(cell, inputs.binaries)
    ident = identity(cfg, cell, run_cell_id, repeat)
    # Every file the guest gets beside the base image (test case, labguest, selftests).
    ident["provenance"] = {**ident["provenance"], "files": provenance.files_digests(files)}
    record = {
        **ident,
        "kernel": {
            "key": kernel.key,
            "image": kernel.image.name,
            "image_sha256": kernel.meta.get("image_sha256"),
            "config_sha256": kernel.meta.get("config_sha256"),
            "dir": str(kernel.dir),
            # --kernel: built elsewhere; its path, `uname -r` and config (lab/build/prebuilt.py)
            **({"prebuilt": kernel.meta["prebuilt"]} if "prebuilt" in kernel.meta else {}),
        },
        "image": {"key": base.key, "path": str(base.path)},
    }
    prebuilt = kernel.meta.get("prebuilt")
    if isinstance(prebuilt, dict):  # run again with the same kernel, not a built one
        record["reproducer"] = reproducer(cfg, cell, str(prebuilt["path"]))
    job = CellJob(
        record=record,
        arch=cell.arch,
        cmdline=boot.cmdline_for(cfg, cell.arch, cell.variant, cell.testcase.cmdline),
        memory_mib=cell.testcase.memory_mib or cell.arch.qemu.memory_mib,
        smp=cell.arch.qemu.smp,
        agent_job=job_for(cell),
        banner=expected_banner(cell.variant),
        boot=cfg.boot,
        test_timeout=cell.testcase.timeout + MARGIN,
    )
    return job, files


def identity(cfg: LabConfig, cell: Cell, run_cell_id: str = "", repeat: int = 1) -> dict[str, Any]:
    """The cell.json fields known before the cell runs: which cell, what it expects,
    how to run it again. An infra cell (CellResult.infra) has just these."""
    rule = cell.expectation()
    return {
        "id": cell.id,
        "run_cell_id": run_cell_id or cell.id,
        "repeat": repeat,
        "arch": cell.arch.name,
        "variant": cell.variant.name,
        "testcase": cell.testcase.name,
        "params": dict(cell.variant.params),
        # Params whose values are series versions: the report compares them side by side.
        **({"series_axes": list(cell.variant.series_axes)} if cell.variant.series_axes else {}),
        "expected": list(rule.outcomes) if rule else [],
        "expected_rule": rule.text if rule else None,
        "reproducer": reproducer(cfg, cell),
        "provenance": provenance.for_cell(cfg.file, cell.testcase.path),
    }
