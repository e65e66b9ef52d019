"""Rule checks over the kernel console: banner, panics, integrity."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lab.classify.findings import _Evidence, _Findings, _msg, _Verdict
from lab.classify.model import Hit
from lab.classify.title import title

# --- the rules, in precedence order ----------------------------------------------


def _banner_mismatch(f: _Findings) -> _Verdict | None:
    expected = f.facts.expected_banner if f.facts is not None else None
    if not expected:
        return None
    want = {str(k): str(v) for k, v in expected.items()}
    banners = f.banners()
    ev = _Evidence(f)
    wanted_text = " ".join(f"{k}={v}" for k, v in want.items())
    if not banners:
        if not f.userspace_ran():
            return None  # no banner because the kernel never got that far: the boot rules say why
        ev.note(f"lab: expected the banner 'secretmem: lab variant {wanted_text}'", "lab:banner")
        ev.tail(5)
        return _Verdict(
            "infra_error",
            "infra_error: the secretmem lab banner is missing: not the kernel the cell asked for",
            ev,
            {"expected_banner": want, "banner": None},
        )
    for hit, seen in banners:
        diff = {k: (v, seen.get(k)) for k, v in want.items() if seen.get(k) != v}
        if diff and not f.userspace_ran() and all(got is None for _, got in diff.values()):
            # Only lines not printed yet (the era is a later initcall than the banner):
            # the console was cut short, so the boot rules say why, not this one.
            return None
        if diff:
            ev.hit(hit)
            ev.note(
                f"lab: expected the banner 'secretmem: lab variant {wanted_text}'", "lab:banner"
            )
            words = ", ".join(f"{k}={got} (expected {exp})" for k, (exp, got) in diff.items())
            return _Verdict(
                "infra_error",
                f"infra_error: the wrong kernel booted: banner has {words}",
                ev,
                {
                    "expected_banner": want,
                    "banner": seen,
                    "mismatch": {k: {"expected": e, "seen": g} for k, (e, g) in diff.items()},
                },
            )
    return None


def _panic_hits(f: _Findings) -> list[Hit]:
    return f.by_class("panic")


def _panic_common(f: _Findings, outcome: str, hit: Hit) -> _Verdict:
    ev = _Evidence(f)
    ev.hit(hit)
    values: dict[str, Any] = {
        "reason": hit.fields.get("reason", ""),
        "panic_signature": hit.sig.name,
    }
    for k in ("pid", "comm"):
        if k in hit.fields:
            values[k] = hit.fields[k]
    extra = []
    causes = [h for cls in ("bug", "oops", "warn") for h in f.by_class(cls) if h.index < hit.index]
    if causes:
        cause = min(causes, key=lambda h: h.index)
        ev.hit(cause, context=12)
        values["cause_signature"] = cause.sig.name
        values["cause"] = _msg(f, cause)
        extra.append(f"after {cause.sig.outcome}: {values['cause']}")
    kills = [h for h in f.kills() if h.index < hit.index]
    if kills:
        values["oom_kills"] = len(kills)
        extra.append(f"after {len(kills)} OOM kill{'s' if len(kills) > 1 else ''}")
        for h in kills[:3]:
            ev.hit(h)
    for h in f.hits("oom_no_killable")[:1] + f.hits("oom_invoked")[-1:]:
        if h.index < hit.index:
            ev.hit(h)
    running = f.running_testcase(hit.index)
    if running:
        values["testcase"] = running
        extra.append(f"during test case {running}")
    reason = values["reason"] or "(no reason)"
    what = "kernel panic before userspace ran: " if outcome == "boot_failure" else ""
    more = f" ({'; '.join(extra)})" if extra else ""
    # The title names what came first: the report that led to the panic, else the panic.
    named = (title(cause) if causes else None) or title(hit)
    return _Verdict(outcome, f"{outcome}: {what}{reason}{more}", ev, values, named)


def _panic_before_userspace(f: _Findings) -> _Verdict | None:
    panics = _panic_hits(f)
    if not panics:
        return None
    if f.facts is not None:  # a lab run: the ready marker says
        if f.userspace_ran(before=panics[0].index):
            return None
        return _panic_common(f, "boot_failure", panics[0])
    # A foreign log often starts mid-run: only positive evidence makes it a boot failure.
    why = f.never_ran(panics[0])
    if why is None:
        return None
    verdict = _panic_common(f, "boot_failure", panics[0])
    verdict.evidence.note(f"classify: userspace never ran: {why}", "lab:boot")
    verdict.fields["boot_evidence"] = why
    return verdict


def _panic(f: _Findings) -> _Verdict | None:
    panics = _panic_hits(f)
    return _panic_common(f, "panic", panics[0]) if panics else None


def _integrity(outcome: str) -> Callable[[_Findings], _Verdict | None]:
    def rule(f: _Findings) -> _Verdict | None:
        hits = f.by_class(outcome)
        if not hits:
            return None
        ev = _Evidence(f)
        ev.hit(hits[0])
        kinds: dict[str, Hit] = {}
        for h in hits:
            kinds.setdefault(h.sig.name, h)
        for h in kinds.values():
            ev.hit(h, context=4)
        first = hits[0]
        values: dict[str, Any] = {"signature": first.sig.name, "message": _msg(f, first)}
        values.update({k: v for k, v in first.fields.items() if k not in values})
        values["reports"] = sum(f.count[n] for n in kinds)
        more = f" (+{values['reports'] - 1} more)" if values["reports"] > 1 else ""
        return _Verdict(outcome, f"{outcome}: {values['message']}{more}", ev, values, title(first))

    return rule
