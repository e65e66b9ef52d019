"""kselftest: the kernel's own tools/testing/selftests/vm/memfd_secret.c, run unchanged."""

import subprocess

import labguest as lg

TESTCASE = {
    "name": "kselftest",
    "purpose": "the 6.1 tree's memfd_secret selftest (file APIs, process_vm_readv, ptrace), "
    "cross-compiled static for the guest arch by the lab",
    "arches": ["*"],
    "timeout": 60,
    "needs": ["kselftest:vm/memfd_secret"],
    "expect": ["* -> pass"],
}


def run(t: lg.Context) -> None:
    proc = subprocess.run(["/lab/bin/memfd_secret"], capture_output=True, text=True, timeout=50)
    lines = proc.stdout.splitlines()
    t.event(
        "selftest output", exit_code=proc.returncode, tap=lines[-20:], stderr=proc.stderr[-500:]
    )
    failed = [ln for ln in lines if ln.startswith("not ok")]
    skipped = [ln for ln in lines if "# SKIP" in ln]
    t.check(not failed, f"selftest failures: {failed}")
    # ksft exit codes: 0 pass, 1 fail, 4 skip
    t.check(
        proc.returncode == 0 and not skipped, f"selftest exit {proc.returncode}, skipped: {skipped}"
    )
    t.observe("pass", tap=[ln for ln in lines if ln.startswith(("ok", "not ok", "# Totals"))])
