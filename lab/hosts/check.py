"""`lab hosts check`: one line per thing a host needs."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any

from lab import __version__, results
from lab.config import LabConfig
from lab.config.hosts import Host
from lab.errors import LabError
from lab.hosts import bundle
from lab.hosts.connect import TRANSPORT_ERRORS, _tail, connect, describe, run
from lab.hosts.transfer import bundle_present, ensure_bundle, hello, qemu_binaries

# --- lab hosts check ---------------------------------------------------------------------


@dataclass(frozen=True)
class CheckLine:
    label: str
    ok: bool
    detail: str


def check(cfg: LabConfig, host: Host, upload: bool = True) -> list[CheckLine]:
    """Per host: reachable, python, lab bundle, QEMU + accelerator per arch, free disk."""
    started = time.monotonic()
    try:
        conn = connect(host)
    except LabError as exc:
        return [CheckLine("reachable", False, str(exc))]
    lines: list[CheckLine] = []
    try:
        key = conn.transport.get_remote_server_key()
        lines.append(
            CheckLine(
                "reachable",
                True,
                f"yes ({time.monotonic() - started:.2f}s); {key.get_name()} host key "
                f"{key.fingerprint} matches {host.known_hosts}",
            )
        )
        binaries = qemu_binaries(cfg, host)
        try:
            info = hello(conn, host, binaries.values())
        except LabError as exc:
            lines.append(CheckLine("python", False, str(exc)))
            return lines
        lines.append(CheckLine("python", True, f"{info.python_version} ({info.executable})"))
        digest = bundle.build().digest
        if upload:
            bundle_dir, uploaded = ensure_bundle(conn, host, info.lab_dir)
            state = "uploaded now" if uploaded else "present"
            lines.append(CheckLine("lab bundle", True, f"{state}: lab {__version__}, {bundle_dir}"))
            present = True
        else:
            present = bundle_present(conn, host, info.lab_dir)
            lines.append(
                CheckLine(
                    "lab bundle",
                    True,
                    f"present: lab {__version__}, {digest}"
                    if present
                    else f"absent (lab {__version__}, {digest}): uploaded on first use",
                )
            )
        facts: dict[str, Any] = {}
        if present and binaries:
            arches = {a: dataclasses.asdict(cfg.arches[a]) for a in binaries}
            argv = [
                "env",
                f"PYTHONPATH={info.lab_dir}/bundles/{digest}",
                host.python,
                "-m",
                "lab.hosts.remote",
                "facts",
                info.lab_dir,
                json.dumps(arches),
            ]
            code, out, err = run(conn, argv, timeout=60)
            if code == 0:
                try:
                    answer = results.loads_bounded(out.encode(), 1 << 20, 4)
                except ValueError:
                    answer = None
                facts = answer if isinstance(answer, dict) else {}
            else:
                lines.append(CheckLine("lab", False, f"lab.hosts.remote failed: {_tail(err)}"))
        kvm = "yes" if info.kvm_usable else "no"
        for arch, b in binaries.items():
            q = info.qemu.get(b) or {}
            if not q.get("path"):
                lines.append(CheckLine(arch, False, f"{b} not found on the host"))
                continue
            f = facts.get(arch)
            accel = f"; accel {f.get('accel')}: {f.get('reason')}" if isinstance(f, dict) else ""
            lines.append(
                CheckLine(
                    arch,
                    True,
                    f"{q['path']}: {q['version'] or 'version unknown'}; "
                    f"/dev/kvm usable: {kvm}{accel}",
                )
            )
        gib = info.free_bytes / 2**30
        lines.append(CheckLine("free disk", gib >= 2, f"{gib:.1f} GiB in {info.lab_dir}"))
        if host.build:
            lines.append(
                CheckLine(
                    "build host",
                    True,
                    "declared; kernels are still built here and shipped "
                    "(remote builds: docs/scaling.md)",
                )
            )
    except TRANSPORT_ERRORS as exc:
        lines.append(CheckLine("connection", False, describe(exc)))
    finally:
        conn.close()
    return lines
