"""LAVA job definitions and device dictionaries for the lab's cells. Pure.

A cell becomes one job for LAVA's `qemu` device type: deploy `to: tmpfs` the cell's
kernel and its initramfs (base image and per-cell overlay in ONE newc archive, so that
a LAVA that unpacks it with `cpio --extract`, which stops at the first trailer, still sees
all of it), boot it with the arch's QEMU arguments, and a `test` action with a monitor
that follows the agent's records framed on the console (the agent runs with
`"channel": "console"`, lab/guest/agent.py) from the first record to `LABREC-END`. No
`overlays: {lava: true}`: a monitor job has no LAVA test scripts to add (lava-dispatcher
2023.01 fails with "nothing to open" when asked to), and without it the ramdisk reaches
QEMU byte for byte as exported.

The boot action waits for the guest's `LABREADY <boot id>` marker, as the local runner
does: a kernel that never gets there ends the job in the boot action, which the importer
reads as the lab's boot deadline. The device dictionary holds what is the same for every
cell of an arch (binary, machine, CPU, console); the job's kernel `image_arg` adds what
is per cell (-m, -smp, -append).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from lab.config import ArchSpec
from lab.errors import UserError
from lab.vm.qemu import CONSOLE_ARGS, machine_args

DEVICE_TYPE = "qemu"
MONITOR = "lab"  # the monitor's name: LAVA's test suite name for the cell's results
RECORD_TAG = "LABREC"  # lab/guest/agent.py CONSOLE_TAG
END_MARK = "LABREC-END"
DEPLOY_SECONDS = 120  # download (file:// or HTTP), cpio unpack + LAVA overlay + repack
MARGIN_SECONDS = 60  # the job's own timeout beyond its actions'
# The first framed record (the agent's `ready`) starts the monitor; each `result` record
# is one LAVA test case (lowercased test case name; error -> fail).
RESULT_PATTERN = (
    RECORD_TAG
    + r' \d+ [0-9a-f]{8} \{"type":"result",'
    + r'"testcase":"(?P<test_case_id>[A-Za-z0-9_.-]+)","verdict":"(?P<result>[a-z]+)"'
)


@dataclass(frozen=True)
class JobInput:
    """What one cell's job needs; everything the lab knows before the cell runs."""

    run_id: str
    cell_id: str  # the run cell id (x86_64/U0/api, or ...#2 for a repeat)
    arch: ArchSpec
    kernel_url: str
    ramdisk_url: str
    cmdline: str
    memory_mib: int
    smp: int
    boot_id: str
    ready_timeout: float  # seconds from QEMU start to LABREADY
    test_timeout: float  # seconds for the test case after LABREADY (the host's deadline)
    metadata: Mapping[str, str] = field(default_factory=dict)


def job_name(run_id: str, cell_id: str) -> str:
    return f"lab {cell_id} ({run_id})"


def _seconds(value: float) -> dict[str, int]:
    return {"seconds": max(1, math.ceil(value))}


def _check_cmdline(cmdline: str) -> str:
    # LAVA splits the QEMU command line as a shell would: the cmdline travels in quotes.
    bad = sorted({c for c in cmdline if c in '"\\`$' or not c.isprintable()})
    if bad:
        raise UserError(
            f"kernel command line {cmdline!r}: cannot be quoted for a LAVA image_arg "
            f"(contains {' '.join(repr(c) for c in bad)}); use plain words"
        )
    return cmdline


def render_job(j: JobInput) -> dict[str, Any]:
    """The LAVA job definition of one cell."""
    kernel_arg = (
        f'-kernel {{kernel}} -m {j.memory_mib} -smp {j.smp} -append "{_check_cmdline(j.cmdline)}"'
    )
    boot = j.ready_timeout + 10  # QEMU start-up on a loaded dispatcher
    test = j.test_timeout
    total = DEPLOY_SECONDS + boot + test + MARGIN_SECONDS
    return {
        "device_type": DEVICE_TYPE,
        "job_name": job_name(j.run_id, j.cell_id),
        "timeouts": {
            "job": _seconds(total),
            "action": _seconds(max(DEPLOY_SECONDS, boot, test)),
        },
        "priority": "medium",
        "visibility": "public",
        "context": {"arch": j.arch.deb_arch},
        "metadata": {
            "lab.run": j.run_id,
            "lab.cell": j.cell_id,
            "lab.boot_id": j.boot_id,
            **dict(j.metadata),
        },
        "actions": [
            {
                "deploy": {
                    "to": "tmpfs",
                    "timeout": _seconds(DEPLOY_SECONDS),
                    "images": {
                        "kernel": {"url": j.kernel_url, "image_arg": kernel_arg},
                        "ramdisk": {
                            "url": j.ramdisk_url,
                            "image_arg": "-initrd {ramdisk}",
                            "format": "cpio.newc",
                            "compression": "gz",
                        },
                    },
                }
            },
            {
                "boot": {
                    "method": "qemu",
                    "media": "tmpfs",
                    "timeout": _seconds(boot),
                    "prompts": [f"LABREADY {j.boot_id}"],
                }
            },
            {
                "test": {
                    "timeout": _seconds(test),
                    "monitors": [
                        {
                            "name": MONITOR,
                            "start": f"{RECORD_TAG} 0 ",
                            "end": END_MARK,
                            "pattern": RESULT_PATTERN,
                            "fixupdict": {"error": "fail"},
                        }
                    ],
                }
            },
        ],
    }


def device_name(arch: ArchSpec) -> str:
    return f"qemu-{arch.name}"


def render_device(arch: ArchSpec, accel: str = "tcg") -> dict[str, Any]:
    """The device dictionary of a `qemu` device for the arch (what `lava-run --device`
    takes; on a LAVA server, the device's dictionary). The QEMU options are the lab's own
    (lab.vm.qemu) minus the virtio-serial result port and the per-cell ones."""
    q = arch.qemu
    options = [*machine_args(arch, accel), *CONSOLE_ARGS, *q.extra_args]
    return {
        "device_type": DEVICE_TYPE,
        "available_architectures": [arch.deb_arch],
        "parameters": {},
        "commands": {},
        "constants": {
            "posix": {
                "lava_test_sh_cmd": "/bin/sh",
                "lava_test_results_dir": "/lava-%s",
                "lava_test_shell_file": "~/.bashrc",
            },
            "kernel-start-message": "Linux version [0-9]",
            "shutdown-message": "reboot: ",
            "default-shell-prompt": "lab# ",
            "spawn_maxread": 4092,
            "failure_retry": 1,
            "boot_retry": 1,
        },
        "actions": {
            "deploy": {
                "connections": {"serial": None},
                "methods": {
                    "tmpfs": None,
                    "image": {"parameters": {"guest": {"size": 512}}},
                },
            },
            "boot": {
                "connections": {"serial": None},
                "methods": {
                    "qemu": {
                        "parameters": {
                            "command": q.binary,
                            # LAVA joins them with spaces and splits the line as a shell does.
                            "options": [shlex.quote(o) for o in options],
                        }
                    }
                },
            },
        },
        "timeouts": {
            "actions": {"apply-overlay-image": {"minutes": 2}},
            "connections": {},
        },
    }


def render_dispatcher() -> dict[str, Any]:
    """dispatcher.yaml for lava-run: a fixed address saves a default-gateway lookup."""
    return {"dispatcher_ip": "127.0.0.1"}


def dump(data: Mapping[str, Any]) -> str:
    """Stable YAML: key order as rendered, no aliases, no line folding."""

    class _NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return yaml.dump(
        dict(data), Dumper=_NoAliases, sort_keys=False, width=10_000, default_flow_style=False
    )
