"""report.html: one self-contained page (inline CSS, no scripts) built from a loaded Run.

The markup is templates/report.html.j2, rendered with autoescape: every value is cleaned
(control characters escaped, lab.report.clean) and HTML-escaped on its way out, so this
module only picks the values (nothing here writes a tag).
"""

from __future__ import annotations

import html
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from lab import __version__
from lab.outcome import Outcome
from lab.report.clean import (
    NOT_RUN_COLOUR,
    OTHER_COLOUR,
    _anchor,
    _clean,
    _dict,
    _line,
    _list,
    _num,
    _seconds,
    _token,
)
from lab.report.model import Run, RunCell, Slot, _param, bundle_command

# --- HTML -----------------------------------------------------------------------------------


def _css() -> str:
    rules = [
        "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em 2em;"
        "color:#1d1d1d;background:#fff}",
        "h1{font-size:1.5em;margin:0 0 .4em}h2{margin-top:1.8em;border-bottom:1px solid #ccc}",
        "code,pre{font:12.5px/1.35 ui-monospace,'DejaVu Sans Mono',monospace}",
        "pre{background:#f6f6f6;border:1px solid #ddd;padding:.5em;overflow-x:auto;"
        "white-space:pre-wrap;word-break:break-all}",
        "table{border-collapse:collapse;margin:.4em 0}",
        "table.meta td,table.meta th,table.kv td,table.kv th,table.list td,table.list th"
        "{border:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top}",
        "table.meta th,table.kv th{background:#f3f3f3;font-weight:600;white-space:nowrap}",
        "table.grid th,table.grid td{border:1px solid #888;padding:0;vertical-align:top}",
        "table.grid th{background:#eee;padding:4px 8px;text-align:left}",
        "table.grid th.variant{white-space:nowrap}",
        "table.grid th .params{display:block;font-weight:normal;font-size:11px;color:#555}",
        "td.cell{min-width:7.5em}",
        "td.cell a{display:block;padding:4px 7px;color:inherit;text-decoration:none}",
        "td.cell .obs{font-weight:600}",
        "td.cell .exp,td.cell .dist,td.cell .note{display:block;font-size:11px}",
        "td.cell.unexpected{box-shadow:inset 0 0 0 3px #e00000}",
        "td.cell.infra{background-image:repeating-linear-gradient(45deg,transparent 0 6px,"
        "rgba(0,0,0,.13) 6px 9px)}",
        f"td.cell.not_run{{color:{NOT_RUN_COLOUR[1]};background:{NOT_RUN_COLOUR[0]};"
        "font-style:italic;box-shadow:inset 0 0 0 1px #bbb}",
        "td.absent{background:#fff;color:#bbb;text-align:center}",
        "td.cell.unstable .obs::after{content:' ≈'}",
        ".mark{font-weight:700;margin-left:.25em}",
        ".mark-unexpected{color:#e00000;background:#fff;border-radius:3px;padding:0 2px}",
        ".badge{display:inline-block;padding:0 6px;border-radius:3px;font-size:12px;"
        "font-weight:600;border:1px solid #888}",
        ".badge.unstable{background:#222;color:#fff}",
        ".badge.v-unexpected{background:#e00000;color:#fff}",
        ".badge.v-expected{background:#dff5df}",
        ".badge.v-infra{background:#ddd}",
        ".badge.v-not_run{background:#f0f0f0;color:#777}",
        ".status-complete{color:#176b17}.status-incomplete,.status-interrupted,"
        ".status-running{color:#b35c00}",
        "span.swatch{padding:1px 6px;border:1px solid #888;border-radius:2px}",
        ".legend span.swatch{display:inline-block;padding:2px 8px;margin:2px;font-size:12px}",
        ".counts span{margin-right:1.2em;font-weight:600}",
        "section.cell-details{border-top:1px solid #ddd;padding-top:.3em}",
        "details.run{margin:.4em 0 .8em 1em}",
        "details.run>summary{cursor:pointer;font-weight:600}",
        "table.evidence td{border:1px solid #e3e3e3;padding:1px 6px;vertical-align:top}",
        "table.evidence td.text{font-family:ui-monospace,monospace;font-size:12px;"
        "white-space:pre-wrap;word-break:break-all}",
        "pre.excerpt mark{background:#fff1a8}",
        ".links a{margin-right:1em}",
        ".muted{color:#777}",
    ]
    for cls, (bg, fg) in [*((o.value, o.colour) for o in Outcome), ("other", OTHER_COLOUR)]:
        rules.append(f".outcome-{cls}{{background-color:{bg};color:{fg}}}")
    return "\n".join(rules)


def _outcome_class(outcome: str) -> str:
    return f"outcome-{outcome}" if Outcome.of(outcome) else "outcome-other"


def _escape(value: Any) -> Markup:
    """Every {{ value }} of the template: cleaned, then HTML-escaped; Markup passes as is."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(_clean(value), quote=True))


class _Joined(jinja2.BaseLoader):
    """The template's lines with their indentation and line ends removed: the page has no
    whitespace between tags, the template is laid out for reading."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Any]:
        text = resources.files("lab.report").joinpath("templates", template).read_text()
        return "".join(line.strip() for line in text.splitlines()), None, lambda: True


def _cell_classes(s: Slot, xarch: bool) -> str:
    obs = s.observed
    classes = ["cell", _outcome_class(obs) if obs else "", s.verdict]
    classes += ["unstable"] * s.unstable + ["xarch"] * xarch
    return " ".join(c for c in classes if c)


def _cell_title(s: Slot) -> str:
    return _clean(s.id + (f": {s.runs[0].detail}" if s.runs else ": not run"), 300)


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=_Joined(),
        autoescape=True,
        finalize=_escape,
        undefined=jinja2.StrictUndefined,
    )
    env.filters |= {
        "token": _token,
        "anchor": lambda name, kind: _anchor(kind, name),
        "outcome_class": _outcome_class,
        "cell_classes": _cell_classes,
        "cell_title": _cell_title,
    }
    return env.get_template("report.html.j2")


def _file_url(path: object) -> str | None:
    if not isinstance(path, str) or not path.startswith("/"):
        return None
    return Path(path).as_uri()


def _host(host: object) -> str:
    if not isinstance(host, dict):
        return _line(host, 200)
    bits = [f"{host[k]}" for k in ("machine", "kernel") if host.get(k)]
    if host.get("cpus"):
        bits.append(f"{host['cpus']} cpus")
    if host.get("python"):
        bits.append(f"python {host['python']}")
    node = host.get("node") or "?"
    return _line(f"{node} ({', '.join(bits)})" if bits else node, 300)


def _durations(d: object, prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if not isinstance(d, dict):
        return out
    for k, v in d.items():
        name = f"{prefix}{_line(k, 80)}"
        if isinstance(v, dict):
            out += _durations(v, name + ".")
        else:
            n = _num(v)
            out.append((name, _seconds(n) if n is not None else _line(v, 80)))
    return out


def _head(run: Run) -> dict[str, Any]:
    """The run's table at the top of the page."""
    m = run.meta
    cfg = _dict(m.get("config"))
    sel = _dict(m.get("selection"))
    cell_secs = [s for s in (r.seconds for r in run.cells) if s is not None]
    hosts, merged = m.get("hosts"), m.get("merged_from")
    return {
        "lab_version": m.get("lab_version"),
        "config_file": cfg.get("file"),
        "config_sha256": cfg.get("sha256"),
        "selection": " ".join(f"{k}={_line(v, 200)}" for k, v in sel.items()),
        "host": _host(m.get("host")),
        "created": m.get("created"),
        "finished": m.get("finished") or "-",
        "hosts": [(k, _host(v)) for k, v in hosts.items()] if isinstance(hosts, dict) else None,
        "merged_from": merged if isinstance(merged, list) else None,
        "durations": _durations(m.get("durations")),
        "cell_time": f"{_seconds(sum(cell_secs))} over {len(cell_secs)} cells"
        if cell_secs
        else "-",
    }


def _grids(run: Run) -> list[dict[str, Any]]:
    """Per arch: its test cases (columns) and, per variant, its params and slots."""
    xarch = run.xarch()
    params = run.key_params()
    out = []
    for arch in run.arches:
        variants = [
            v for v in run.variants if any(s.arch == arch and s.variant == v for s in run.slots)
        ]
        tests = [
            t for t in run.testcases if any(s.arch == arch and s.testcase == t for s in run.slots)
        ]
        rows = [
            (v, params.get(v), [(run.slot(arch, v, t), (v, t) in xarch) for t in tests])
            for v in variants
        ]
        out.append({"arch": arch, "tests": tests, "rows": rows})
    return out


def _evidence(c: RunCell) -> list[tuple[str, str, Any, str]]:
    """(where, link or "", evidence line, kernel time) per evidence line of a run cell."""
    rows = []
    for e in c.evidence:
        if e.line_no and "console.log" in c.files:
            where, link = f"console.log:{e.line_no}", c.link("console.log")
        elif e.line_no:
            where, link = f"console.log:{e.line_no}", ""
        elif e.signature.startswith("agent"):
            where, link = "agent", c.link("result.jsonl")
        else:
            where, link = "lab", ""
        rows.append((where, link, e, f"{e.ktime:.6f}" if e.ktime is not None else ""))
    return rows


def _run_cell(run: Run, c: RunCell, open_: bool) -> dict[str, Any]:
    """One run cell's details."""
    d = c.data
    t = _dict(d.get("timings"))
    timings = ", ".join(
        f"{k} {_seconds(_num(t.get(k)))}" for k in ("ready", "agent", "qemu", "cell") if k in t
    )
    klabel = f"{c.arch}/{c.variant}"
    kernels = run.meta.get("kernels")
    p = d.get("params")
    params = (
        " ".join(f"{_line(k, 40)}={_param(v)}" for k, v in p.items()) if isinstance(p, dict) else ""
    )
    accel = (_line(d.get("accel")), _line(d.get("accel_reason")))
    killed = ", killed by the lab" if d.get("qemu_killed") else ""
    return {
        "cell": c,
        "open": open_,
        "expected_rule": d.get("expected_rule") or "-",
        "rule": _line(c.ev.get("rule"), 80) or "-",
        "rule_text": _line(c.ev.get("rule_text"), 500),
        "params": params or "-",
        "kernel": _dict(d.get("kernel")).get("key") or "-",
        "kernel_anchor": _anchor("kernel", klabel)
        if isinstance(kernels, dict) and klabel in kernels
        else "",
        "accel": " ".join(x for x in accel if x) or "-",
        "cmdline": d.get("cmdline") or "-",
        "qemu": f"exit {_line(d.get('qemu_exit'))}{killed}",
        "timings": timings or "-",
        "finished": f"{_line(d.get('finished'))} on {_line(d.get('host') or '?')}",
        "evidence": _evidence(c),
        "reproducer": d.get("reproducer") or "-",
        # An unexpected cell's rerun without the lab: a tarball with QEMU's command line.
        "bundle": bundle_command(run.id, c.dirname) if c.verdict == "unexpected" else "",
    }


def _details(run: Run) -> list[tuple[Slot, list[dict[str, Any]]]]:
    return [
        (
            s,
            [
                _run_cell(run, c, i == 0 or c.verdict != "expected" or len(s.runs) <= 3)
                for i, c in enumerate(s.runs)
            ],
        )
        for s in run.slots
    ]


def _kernel(run: Run, label: str, k: dict[str, Any]) -> dict[str, Any]:
    """One kernel's provenance."""
    src = _dict(k.get("source"))
    kdir = k.get("dir")
    files = []
    for name in ("config", "fragment.config", "build.log", "meta.json"):
        url = _file_url(f"{kdir}/{name}") if isinstance(kdir, str) else None
        if url:
            files.append((name, url))
    tc = k.get("toolchain")
    return {
        "label": label,
        "key": k.get("key"),
        "dir": kdir,
        "image_sha256": k.get("image_sha256"),
        "config_sha256": k.get("config_sha256"),
        "source_description": src.get("description"),
        "source_identity": src.get("identity"),
        "toolchain": "; ".join(f"{_line(a)}: {_line(b)}" for a, b in tc.items())
        if isinstance(tc, dict)
        else tc,
        "durations": ", ".join(f"{a} {b}" for a, b in _durations(k.get("durations"))) or "-",
        "reproducer": k.get("reproducer") or "-",
        "files": files,
        "patches": [p for p in _list(k.get("series")) if isinstance(p, dict)],
        "fragments": [f for f in _list(k.get("fragments")) if isinstance(f, dict)],
        "fragment_text": run.fragments.get(label),
    }


def _kernels(run: Run) -> list[dict[str, Any]]:
    """The kernels of run.json, in grid order (arch, then variant)."""

    def order(label: str) -> tuple[int, int, str]:
        arch, _, variant = label.partition("/")
        return (
            run.arches.index(arch) if arch in run.arches else len(run.arches),
            run.variants.index(variant) if variant in run.variants else len(run.variants),
            label,
        )

    kernels = _dict(run.meta.get("kernels"))
    return [
        _kernel(run, str(label), k)
        for label, k in sorted(kernels.items(), key=lambda kv: order(str(kv[0])))
        if isinstance(k, dict)
    ]


def render_html(run: Run) -> str:
    """The self-contained HTML report (inline CSS, no scripts, no external fetches)."""
    m = run.meta
    failures, images = m.get("build_failures"), m.get("images")
    seen = {r.observed for r in run.cells}
    return _template().render(
        run=run,
        css=Markup(_css()),
        version=__version__,
        counts=run.counts(),
        head=_head(run),
        legend=[*Outcome, *sorted(c for c in seen if Outcome.of(c) is None)],
        not_run_colour=NOT_RUN_COLOUR,
        grids=_grids(run),
        constant_params=run.constant_params(),
        # Per run cell, not per slot: of an unstable slot only some repetitions are bad.
        bad=[c for c in run.cells if c.verdict in ("unexpected", "infra")],
        xarch=run.xarch(),
        unstable=[s for s in run.slots if s.unstable],
        details=_details(run),
        any_kernel=bool(_dict(m.get("kernels"))),
        kernels=_kernels(run),
        build_failures=sorted(failures.items()) if isinstance(failures, dict) else [],
        images=[(a, i) for a, i in sorted(images.items()) if isinstance(i, dict)]
        if isinstance(images, dict) and images
        else None,
    )
