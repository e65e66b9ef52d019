"""junit.xml: one test case per run cell, for CI systems."""

from __future__ import annotations

import collections
import xml.etree.ElementTree as ET

from lab.report.clean import _clean, _line, _split_id
from lab.report.model import Run

# --- JUnit ----------------------------------------------------------------------------------


MAX_SUBTESTS = 1000  # per cell (lab.ktap.MAX_SUBTESTS writes no more)


def _subtests(
    suite: ET.Element,
    n: collections.Counter[str],
    arch: str,
    cell_name: str,
    variant: str,
    testcase: str,
    subtests: object,
) -> None:
    """One <testcase> per KTAP subtest of a selftest cell (cell.json `subtests`, written
    by lab.ktap.cell_fields); entries of another shape (a foreign cell.json) are skipped."""
    if not isinstance(subtests, list):
        return
    for st in subtests[:MAX_SUBTESTS]:
        if not isinstance(st, dict) or not isinstance(st.get("name"), str):
            continue
        status = st.get("status")
        case = ET.SubElement(
            suite,
            "testcase",
            name=f"{cell_name}/{_line(st['name'], 300)}",
            classname=f"lab.{arch}.{variant}.{testcase}",
            time="0.000",
        )
        n["tests"] += 1
        reason = _line(st.get("reason") or status, 500)
        if status in ("fail", "timeout"):
            n["failures"] += 1
            ET.SubElement(case, "failure", type=str(status), message=reason)
        elif status == "skip":
            n["skipped"] += 1
            ET.SubElement(case, "skipped", message=reason)
        elif status not in ("pass", "xfail", "todo"):  # error, or a foreign word
            n["errors"] += 1
            ET.SubElement(case, "error", type=_line(status, 40), message=reason)


def render_junit(run: Run) -> str:
    """One <testsuite> per arch, one <testcase> per run cell (repetitions included)."""
    root = ET.Element("testsuites", name=f"lab {run.id}")
    totals = collections.Counter[str]()
    for arch in run.arches:
        suite = ET.SubElement(root, "testsuite", name=f"lab.{arch}")
        props = ET.SubElement(suite, "properties")
        for k, v in (
            ("run_id", run.id),
            ("status", run.status),
            (
                "config_sha256",
                (run.meta.get("config") or {}).get("sha256")
                if isinstance(run.meta.get("config"), dict)
                else None,
            ),
        ):
            ET.SubElement(props, "property", name=k, value=_line(v))
        n = collections.Counter[str]()
        elapsed = 0.0
        for c in (c for c in run.cells if c.arch == arch):
            name = f"{c.variant}/{c.testcase}" + (f"#{c.repeat}" if c.repeat > 1 else "")
            secs = c.seconds or 0.0
            elapsed += secs
            case = ET.SubElement(
                suite, "testcase", name=name, classname=f"lab.{arch}", time=f"{secs:.3f}"
            )
            n["tests"] += 1
            body = "\n".join(
                f"{f'console.log:{e.line_no}' if e.line_no else e.signature}: {e.text}"
                for e in c.evidence
            )
            if c.verdict == "unexpected":
                n["failures"] += 1
                el = ET.SubElement(
                    case,
                    "failure",
                    type=c.observed,
                    message=_line(
                        f"observed {c.observed}, expected {'|'.join(c.expected) or 'none declared'}"
                        f": {c.detail}",
                        1000,
                    ),
                )
                el.text = body
            elif c.verdict == "infra":
                n["errors"] += 1
                el = ET.SubElement(
                    case, "error", type=c.observed, message=_line(c.detail or c.observed, 1000)
                )
                el.text = body
            out = ET.SubElement(case, "system-out")
            out.text = _clean(
                f"observed: {c.observed}\nexpected: "
                f"{'|'.join(c.expected) or 'none declared'}\n"
                f"rule: {_line(c.ev.get('rule'))}\ndetail: {c.detail}\n"
                f"reproduce: {_line(c.data.get('reproducer'))}\n"
                f"console: {c.link('console.log')}\n"
            )
            _subtests(suite, n, arch, name, c.variant, c.testcase, c.data.get("subtests"))
        for rid in run.not_run:
            a, v, t, rep = _split_id(rid)
            if a != arch:
                continue
            case = ET.SubElement(
                suite,
                "testcase",
                name=f"{v}/{t}" + (f"#{rep}" if rep > 1 else ""),
                classname=f"lab.{arch}",
                time="0.000",
            )
            n["tests"] += 1
            n["skipped"] += 1
            ET.SubElement(case, "skipped", message=f"not run (run {run.status})")
        for k in ("tests", "failures", "errors", "skipped"):
            suite.set(k, str(n[k]))
        suite.set("time", f"{elapsed:.3f}")
        totals.update(n)
        totals["time_ms"] += int(elapsed * 1000)
    for k in ("tests", "failures", "errors", "skipped"):
        root.set(k, str(totals[k]))
    root.set("time", f"{totals['time_ms'] / 1000:.3f}")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
