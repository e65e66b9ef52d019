"""report.html: one self-contained page (inline CSS, no scripts) built from a loaded Run."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from lab import __version__
from lab.outcome import Outcome
from lab.report.clean import (
    NOT_RUN_COLOUR,
    OTHER_COLOUR,
    _anchor,
    _dict,
    _h,
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


def _badge(verdict: str) -> str:
    word = {"not_run": "not run"}.get(verdict, verdict)
    return f'<span class="badge v-{_token(verdict)}">{_h(word)}</span>'


def _kv(rows: Iterable[tuple[str, str]], cls: str = "kv") -> str:
    """A two-column table; values are HTML already."""
    body = "".join(f"<tr><th>{_h(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


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


def _header_html(run: Run) -> str:
    m = run.meta
    c = run.counts()
    cfg = _dict(m.get("config"))
    sel = _dict(m.get("selection"))
    cell_secs = [s for s in (r.seconds for r in run.cells) if s is not None]
    rows = [
        ("run", f"<code>{_h(run.id)}</code>"),
        ("status", f'<span class="status-{_token(run.status)}">{_h(run.status)}</span>'),
        ("planned cells", _h(len(run.cells) + len(run.not_run))),
        ("lab version", _h(m.get("lab_version"))),
        (
            "config",
            f"<code>{_h(cfg.get('file'))}</code> sha256 <code>{_h(cfg.get('sha256'))}</code>",
        ),
        ("selection", _h(" ".join(f"{k}={_line(v, 200)}" for k, v in sel.items()))),
        ("host", _h(_host(m.get("host")))),
        ("created", _h(m.get("created"))),
        ("finished", _h(m.get("finished") or "-")),
    ]
    hosts = m.get("hosts")
    if isinstance(hosts, dict):
        rows.append(
            ("shard hosts", "<br>".join(f"{_h(k)}: {_h(_host(v))}" for k, v in hosts.items()))
        )
    merged = m.get("merged_from")
    if isinstance(merged, list):
        rows.append(("merged from", ", ".join(f"<code>{_h(r)}</code>" for r in merged)))
    for k, v in _durations(m.get("durations")):
        rows.append((f"duration: {k}", _h(v)))
    rows.append(
        (
            "cell time (sum)",
            _h(f"{_seconds(sum(cell_secs))} over {len(cell_secs)} cells" if cell_secs else "-"),
        )
    )
    counts = (
        f'<p class="counts"><span data-count="expected">{c["expected"]} expected</span>'
        f'<span data-count="unexpected">{c["unexpected"]} unexpected</span>'
        f'<span data-count="infra">{c["infra"]} infra</span>'
        f'<span data-count="not_run">{c["not_run"]} not run</span></p>'
    )
    return (
        f"<h1>lab run <code>{_h(run.id)}</code> "
        f'<span class="status-{_token(run.status)}">{_h(run.status)}</span></h1>'
        f"{counts}{_kv(rows, 'meta')}"
    )


def _legend_html(run: Run) -> str:
    seen = {r.observed for r in run.cells}
    classes = [*Outcome, *sorted(c for c in seen if Outcome.of(c) is None)]
    swatches = "".join(f'<span class="swatch {_outcome_class(c)}">{_h(c)}</span>' for c in classes)
    return (
        f'<div class="legend" id="legend"><strong>Observed outcome:</strong> {swatches}'
        f'<span class="swatch" style="background:{NOT_RUN_COLOUR[0]};'
        f'color:{NOT_RUN_COLOUR[1]}"><i>not run</i></span><br>'
        "<strong>Marks:</strong> "
        '<span class="mark mark-unexpected">✗</span> unexpected (red frame) · '
        '<span class="mark">⚠</span> infrastructure error (striped) · '
        '<span class="badge unstable">UNSTABLE</span> repetitions disagree · '
        '<span class="mark">⇄</span> arches disagree · '
        '"exp: X" the expected outcome when the observed one differs</div>'
    )


def _grid_cell(s: Slot, xarch: bool) -> str:
    obs = s.observed
    classes = ["cell", _outcome_class(obs) if obs else "", s.verdict]
    if s.unstable:
        classes.append("unstable")
    if xarch:
        classes.append("xarch")
    expected = "|".join(s.expected)
    inner = [f'<span class="obs">{_h(obs or "not run")}</span>']
    if obs and (not s.expected or obs not in s.expected):
        inner.append(f'<span class="exp">exp: {_h(expected or "none")}</span>')
    if s.unstable:
        inner.append(
            f'<span class="dist">{_h(s.distribution())}</span>'
            '<span class="badge unstable">UNSTABLE</span>'
        )
    elif len(s.runs) > 1:
        inner.append(f'<span class="dist">{_h(s.distribution())}</span>')
    if s.runs and s.not_run:
        inner.append(f'<span class="note">{len(s.not_run)} not run</span>')
    if s.verdict == "unexpected":
        inner.append('<span class="mark mark-unexpected" title="unexpected">✗</span>')
    elif s.verdict == "infra":
        inner.append('<span class="mark" title="infrastructure error">⚠</span>')
    if xarch:
        inner.append('<span class="mark" title="arches disagree">⇄</span>')
    title = s.id + (f": {s.runs[0].detail}" if s.runs else ": not run")
    attrs = (
        f'class="{" ".join(c for c in classes if c)}" data-cell="{_h(s.id)}" '
        f'data-observed="{_h(obs or "not_run")}" data-expected="{_h(expected)}" '
        f'data-verdict="{_h(s.verdict)}" data-runs="{len(s.runs)}"'
    )
    if len(s.runs) > 1:
        attrs += f' data-distribution="{_h(s.distribution())}"'
    return (
        f'<td {attrs} title="{_h(title, 300)}"><a href="#{_anchor("cell", s.id)}">'
        f"{''.join(inner)}</a></td>"
    )


def _grids_html(run: Run) -> str:
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
        head = "".join(f'<th class="testcase" data-testcase="{_h(t)}">{_h(t)}</th>' for t in tests)
        rows = []
        for v in variants:
            tds = []
            for t in tests:
                s = run.slot(arch, v, t)
                tds.append(
                    _grid_cell(s, (v, t) in xarch)
                    if s
                    else '<td class="absent" title="not planned">·</td>'
                )
            p = params.get(v)
            ptxt = f'<span class="params">{_h(p)}</span>' if p else ""
            rows.append(
                f'<tr data-variant="{_h(v)}"><th class="variant">{_h(v)}{ptxt}</th>'
                f"{''.join(tds)}</tr>"
            )
        out.append(
            f'<h2 id="{_anchor("arch", arch)}">{_h(arch)}</h2>'
            f'<table class="grid" data-arch="{_h(arch)}"><thead><tr>'
            f"<th>variant</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
    const = run.constant_params()
    if const:
        out.append(f'<p class="muted">Params common to every variant: <code>{_h(const)}</code></p>')
    return "".join(out)


def _slot_link(s: Slot | str) -> str:
    sid = s.id if isinstance(s, Slot) else s
    return f'<a href="#{_anchor("cell", sid)}"><code>{_h(sid)}</code></a>'


def _problems_html(run: Run) -> str:
    out = []
    # Per run cell, not per slot: of an unstable slot only some repetitions are bad.
    bad = [c for c in run.cells if c.verdict in ("unexpected", "infra")]
    if bad:
        rows = "".join(
            f'<tr data-run-cell="{_h(c.run_cell_id)}">'
            f'<td><a href="#{_anchor("run", c.run_cell_id)}"><code>{_h(c.run_cell_id)}</code>'
            f"</a></td><td>{_badge(c.verdict)}</td>"
            f"<td>{_h(c.observed)}</td><td>{_h('|'.join(c.expected) or 'none')}</td>"
            f"<td>{_h(c.detail)}</td></tr>"
            for c in bad
        )
        out.append(
            '<h2 id="problems">Unexpected and infrastructure results</h2>'
            '<table class="list"><tr><th>cell</th><th>verdict</th><th>observed</th>'
            f"<th>expected</th><th>detail</th></tr>{rows}</table>"
        )
    xarch = run.xarch()
    if xarch:
        rows = "".join(
            f'<tr data-pair="{_h(v)}/{_h(t)}"><td><code>{_h(v)}/{_h(t)}</code></td><td>'
            + "<br>".join(f"{_slot_link(s)}: {_h(s.distribution())}" for s in slots.values())
            + "</td></tr>"
            for (v, t), slots in xarch.items()
        )
        out.append(
            '<h2 id="xarch">Arches disagree</h2><p>The same variant and test case '
            "observed different outcomes on different arches (infrastructure errors "
            "ignored).</p>"
            f'<table class="list"><tr><th>variant/test</th><th>observed</th></tr>{rows}'
            "</table>"
        )
    unstable = [s for s in run.slots if s.unstable]
    if unstable:
        rows = "".join(
            f'<tr data-cell="{_h(s.id)}"><td>{_slot_link(s)}</td>'
            f"<td>{_h(s.distribution())}</td></tr>"
            for s in unstable
        )
        out.append(
            '<h2 id="unstable">Unstable cells</h2><p>Repetitions of these cells '
            "observed more than one outcome class.</p>"
            f'<table class="list"><tr><th>cell</th><th>outcomes</th></tr>{rows}</table>'
        )
    if run.not_run:
        items = ", ".join(f"<code>{_h(r)}</code>" for r in run.not_run)
        out.append(f'<h2 id="not-run">Not run ({len(run.not_run)})</h2><p>{items}</p>')
    if run.unreadable:
        rows = "".join(
            f"<tr><td><code>cells/{_h(d)}</code></td><td>{_h(why)}</td></tr>"
            for d, why in run.unreadable
        )
        out.append(
            f'<h2 id="unreadable">Unreadable cells ({len(run.unreadable)})</h2>'
            "<p>These cell directories hold a cell.json the lab cannot use; their cells "
            "count as not run (<code>--resume</code> runs them again).</p>"
            f'<table class="list"><tr><th>directory</th><th>problem</th></tr>{rows}</table>'
        )
    return "".join(out)


def _evidence_html(c: RunCell) -> str:
    if not c.evidence:
        return '<p class="muted">No evidence lines.</p>'
    rows = []
    for e in c.evidence:
        if e.line_no and "console.log" in c.files:
            where = f'<a href="{_h(c.link("console.log"))}">console.log:{e.line_no}</a>'
        elif e.line_no:
            where = f"console.log:{e.line_no}"
        elif e.signature.startswith("agent"):
            where = f'<a href="{_h(c.link("result.jsonl"))}">agent</a>'
        else:
            where = "lab"
        kt = f"{e.ktime:.6f}" if e.ktime is not None else ""
        rows.append(
            f'<tr><td class="ln">{where}</td><td><code>{_h(e.signature)}</code></td>'
            f'<td class="kt">{_h(kt)}</td><td class="text">{_h(e.text)}</td></tr>'
        )
    table = f'<table class="evidence">{"".join(rows)}</table>'
    if c.excerpt:
        lines = []
        for n, text, mark in c.excerpt:
            if not n:
                lines.append("      …")
                continue
            line = f"{n:>6} | {_h(text)}"
            lines.append(f"<mark>{line}</mark>" if mark else line)
        table += (
            "<p>Console excerpt (evidence lines highlighted; full log: "
            f'<a href="{_h(c.link("console.log"))}">console.log</a>):</p>'
            f'<pre class="excerpt">{chr(10).join(lines)}</pre>'
        )
    return table


def _run_cell_html(run: Run, c: RunCell, open_: bool) -> str:
    d = c.data
    t = _dict(d.get("timings"))
    timings = ", ".join(
        f"{k} {_seconds(_num(t.get(k)))}" for k in ("ready", "agent", "qemu", "cell") if k in t
    )
    kernel = _dict(d.get("kernel"))
    klabel = f"{c.arch}/{c.variant}"
    kernels = run.meta.get("kernels")
    klink = (
        f' (<a href="#{_anchor("kernel", klabel)}">provenance</a>)'
        if isinstance(kernels, dict) and klabel in kernels
        else ""
    )
    rule = _line(c.ev.get("rule"), 80)
    p = d.get("params")
    params = (
        " ".join(f"{_line(k, 40)}={_param(v)}" for k, v in p.items()) if isinstance(p, dict) else ""
    )
    rule_text = _line(c.ev.get("rule_text"), 500)
    rows = [
        ("observed", f'<span class="swatch {_outcome_class(c.observed)}">{_h(c.observed)}</span>'),
        ("expected", _h("|".join(c.expected) or "none declared")),
        ("expectation rule", f"<code>{_h(d.get('expected_rule') or '-')}</code>"),
        ("verdict", _badge(c.verdict)),
        *([("title", _h(c.title))] if c.title else []),
        ("detail", _h(c.detail)),
        ("classifier rule", f"<code>{_h(rule or '-')}</code> {_h(rule_text)}"),
        ("params", f"<code>{_h(params or '-')}</code>"),
        ("kernel", f"<code>{_h(kernel.get('key') or '-')}</code>{klink}"),
        (
            "accelerator",
            _h(
                " ".join(x for x in (_line(d.get("accel")), _line(d.get("accel_reason"))) if x)
                or "-"
            ),
        ),
        ("cmdline", f"<code>{_h(d.get('cmdline') or '-')}</code>"),
        (
            "qemu",
            _h(
                f"exit {_line(d.get('qemu_exit'))}"
                + (", killed by the lab" if d.get("qemu_killed") else "")
            ),
        ),
        ("timings", _h(timings or "-")),
        ("finished", _h(f"{_line(d.get('finished'))} on {_line(d.get('host') or '?')}")),
    ]
    links = " ".join(f'<a href="{_h(c.link(f))}">{_h(f)}</a>' for f in c.files)
    # An unexpected cell's rerun without the lab: a tarball with QEMU's command line.
    bundle = f"\n{_h(bundle_command(run.id, c.dirname))}" if c.verdict == "unexpected" else ""
    return (
        f'<details class="run" id="{_anchor("run", c.run_cell_id)}" '
        f'data-run-cell="{_h(c.run_cell_id)}"{" open" if open_ else ""}>'
        f"<summary>{_h(c.run_cell_id)}: {_h(c.observed)} "
        f"{_badge(c.verdict)}</summary>{_kv(rows)}"
        f"<h4>Evidence</h4>{_evidence_html(c)}"
        f"<h4>Reproduce</h4><pre>{_h(d.get('reproducer') or '-')}{bundle}</pre>"
        f'<p class="links">Files: {links or "none"}</p></details>'
    )


def _details_html(run: Run) -> str:
    out = ['<h2 id="cells">Cell details</h2>']
    for s in run.slots:
        head = (
            f"<h3>{_h(s.id)} {_badge(s.verdict)}"
            + (' <span class="badge unstable">UNSTABLE</span>' if s.unstable else "")
            + "</h3>"
        )
        parts = [head]
        if len(s.runs) > 1 or s.not_run:
            parts.append(
                f"<p>{len(s.runs)} run(s): {_h(s.distribution() or '-')}"
                + (f"; not run: {', '.join(_h(r) for r in s.not_run)}" if s.not_run else "")
                + "</p>"
            )
        for i, c in enumerate(s.runs):
            parts.append(
                _run_cell_html(run, c, i == 0 or c.verdict != "expected" or len(s.runs) <= 3)
            )
        out.append(
            f'<section class="cell-details" id="{_anchor("cell", s.id)}" '
            f'data-cell="{_h(s.id)}">{"".join(parts)}</section>'
        )
    return "".join(out)


def _provenance_html(run: Run) -> str:
    m = run.meta
    out = ['<h2 id="provenance">Build provenance</h2>']
    kernels = _dict(m.get("kernels"))
    if not kernels:
        out.append('<p class="muted">No kernel built in this run.</p>')

    def order(label: str) -> tuple[int, int, str]:
        arch, _, variant = label.partition("/")
        return (
            run.arches.index(arch) if arch in run.arches else len(run.arches),
            run.variants.index(variant) if variant in run.variants else len(run.variants),
            label,
        )

    for label, k in sorted(kernels.items(), key=lambda kv: order(str(kv[0]))):
        if not isinstance(k, dict):
            continue
        src = _dict(k.get("source"))
        kdir = k.get("dir")
        links = []
        for name in ("config", "fragment.config", "build.log", "meta.json"):
            url = _file_url(f"{kdir}/{name}") if isinstance(kdir, str) else None
            if url:
                links.append(f'<a href="{_h(url)}">{_h(name)}</a>')
        tc = k.get("toolchain")
        rows = [
            ("key", f"<code>{_h(k.get('key'))}</code>"),
            ("directory", f"<code>{_h(kdir)}</code>"),
            ("image sha256", f"<code>{_h(k.get('image_sha256'))}</code>"),
            ("config sha256", f"<code>{_h(k.get('config_sha256'))}</code>"),
            ("source", f"{_h(src.get('description'))}<br><code>{_h(src.get('identity'))}</code>"),
            (
                "toolchain",
                _h(
                    "; ".join(f"{_line(a)}: {_line(b)}" for a, b in tc.items())
                    if isinstance(tc, dict)
                    else tc
                ),
            ),
            (
                "build durations",
                _h(", ".join(f"{a} {b}" for a, b in _durations(k.get("durations"))) or "-"),
            ),
            ("reproducer", f"<code>{_h(k.get('reproducer') or '-')}</code>"),
            ("files", " ".join(links) or "-"),
        ]
        series = _list(k.get("series"))
        patches = "".join(
            f"<tr><td>{_h(p.get('series'))}</td><td><code>{_h(p.get('patch'))}</code></td>"
            f"<td><code>{_h(p.get('sha256'))}</code></td></tr>"
            for p in series
            if isinstance(p, dict)
        )
        frags = _list(k.get("fragments"))
        frag_rows = "".join(
            f"<tr><td><code>{_h(f.get('template'))}</code></td>"
            f"<td><code>{_h(f.get('sha256'))}</code></td></tr>"
            for f in frags
            if isinstance(f, dict)
        )
        text = run.fragments.get(str(label))
        embedded = (
            f"<details><summary>rendered fragment.config ({len(text.splitlines())} "
            f"lines)</summary><pre>{_h(text)}</pre></details>"
            if text is not None
            else '<p class="muted">fragment.config not readable when rendered.</p>'
        )
        out.append(
            f'<section class="kernel" id="{_anchor("kernel", str(label))}" '
            f'data-kernel="{_h(label)}"><h3>{_h(label)}</h3>{_kv(rows)}'
            f"<h4>Patches</h4>"
            + (
                f'<table class="list"><tr><th>series</th><th>patch</th><th>sha256</th></tr>'
                f"{patches}</table>"
                if patches
                else '<p class="muted">none</p>'
            )
            + "<h4>Config fragments</h4>"
            + (
                f'<table class="list"><tr><th>template</th><th>sha256</th></tr>{frag_rows}</table>'
                if frag_rows
                else '<p class="muted">none</p>'
            )
            + f"{embedded}</section>"
        )
    failures = m.get("build_failures")
    if isinstance(failures, dict) and failures:
        frows = "".join(
            f'<tr data-kernel="{_h(k)}"><td><code>{_h(k)}</code></td><td>{_h(v)}</td></tr>'
            for k, v in sorted(failures.items())
        )
        out.append(
            '<h3 id="build-failures">Build failures</h3><table class="list">'
            f"<tr><th>kernel</th><th>first error</th></tr>{frows}</table>"
        )
    images = m.get("images")
    if isinstance(images, dict) and images:
        irows = "".join(
            f"<tr><td>{_h(a)}</td><td><code>{_h(i.get('key'))}</code></td>"
            f"<td><code>{_h(i.get('path'))}</code></td></tr>"
            for a, i in sorted(images.items())
            if isinstance(i, dict)
        )
        out.append(
            '<h3 id="images">Guest images</h3><table class="list"><tr><th>arch</th>'
            f"<th>key</th><th>path</th></tr>{irows}</table>"
        )
    return "".join(out)


def render_html(run: Run) -> str:
    """The self-contained HTML report (inline CSS, no scripts, no external fetches)."""
    body = (
        _header_html(run)
        + _legend_html(run)
        + _grids_html(run)
        + _problems_html(run)
        + _details_html(run)
        + _provenance_html(run)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        # No scripts and nothing fetched: the report is opened from CI artefacts and
        # mail attachments, and it displays text a guest wrote.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>lab run {_h(run.id)}: {_h(run.status)}</title>"
        f"<style>{_css()}</style></head><body>{body}"
        f'<p class="muted">Rendered by lab {_h(__version__)}.</p></body></html>\n'
    )
