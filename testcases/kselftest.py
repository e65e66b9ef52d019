"""kselftest: the kernel's own tools/testing/selftests/vm/memfd_secret.c, run unchanged."""

import subprocess

import labguest as lg

TESTCASE = {
    "name": "kselftest",
    "purpose": "the 6.1 tree's memfd_secret selftest (file APIs, process_vm_readv, ptrace), "
    "cross-compiled static for the guest arch by the lab",
    "arches": ["*"],
    "families": ["secretmem"],  # the secretmem series: meaningless on other families
    "timeout": 60,
    "needs": ["kselftest:vm/memfd_secret"],
    "expect": ["* -> pass"],
}


def _selftest() -> dict[str, object]:
    # In a task: the selftest binary inherits the task's oom_score_adj, not the harness's.
    proc = subprocess.run(["/lab/bin/memfd_secret"], capture_output=True, text=True, timeout=50)
    # the tail only: a task returns at most labguest.MAX_RECORD bytes of JSON
    return {
        "returncode": proc.returncode,
        "stdout": proc.stdout[-20000:],
        "stderr": proc.stderr[-500:],
    }


KTAP_CHARS = 12000


def _tail(lines: list[str], limit: int) -> list[str]:
    out: list[str] = []
    size = 0
    for ln in reversed(lines):
        size += len(ln[:500]) + 4
        if size > limit:
            break
        out.append(ln[:500])
    return out[::-1]


def run(t: lg.Context) -> None:
    res = t.task("memfd_secret", _selftest, role="worker", timeout=55)
    t.check(res.ok, f"the selftest task ended {res.status} {res.signal} {res.error}")
    out = dict(res.value)
    lines = str(out["stdout"]).splitlines()
    proc_returncode = out["returncode"]
    t.event("selftest output", exit_code=proc_returncode, tap=lines[-20:], stderr=out["stderr"])
    # The whole output's tail for the host's KTAP parser (lab/ktap.py: per-subtest results
    # in cell.json and JUnit), in the result record whether the checks below pass or not;
    # at most KTAP_CHARS so the record stays under labguest.MAX_RECORD.
    t.data["ktap"] = _tail(lines, KTAP_CHARS)
    failed = [ln for ln in lines if ln.startswith("not ok")]
    skipped = [ln for ln in lines if "# SKIP" in ln]
    t.check(not failed, f"selftest failures: {failed}")
    # ksft exit codes: 0 pass, 1 fail, 4 skip
    t.check(
        proc_returncode == 0 and not skipped, f"selftest exit {proc_returncode}, skipped: {skipped}"
    )
    t.observe("pass", tap=[ln for ln in lines if ln.startswith(("ok", "not ok", "# Totals"))])
