"""The admin trace page: recent requests and one request's span waterfall, as HTML.

Rendered on the server from the documents of ``GET /traces.json``, with no script and
no external asset, so it works offline and with the admin token (the browser sends
one request, with whatever header it was given). Every value shown comes from spans,
which hold what callers sent (a ``x-gateway-user`` header, a model name): each one
goes through :func:`html.escape`, and the page is served with a Content-Security-Policy
that forbids scripts altogether, so markup in a value can never run.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote

#: sent with the page: no script, no external anything; inline styles only
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

_STYLE = """
body{font:13px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:16px;color:#1f2328;background:#fff}
h1{font-size:18px;margin:0 0 8px}h2{font-size:15px;margin:16px 0 6px}
a{color:#0969da;text-decoration:none}a:hover{text-decoration:underline}
table{border-collapse:collapse;width:100%}th,td{padding:3px 6px;border-bottom:1px solid #d8dee4;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.s2{color:#1a7f37}.s4{color:#9a6700}.s5{color:#cf222e}.muted{color:#656d76}
.kind{display:inline-block;font-size:10px;padding:0 4px;border-radius:3px;background:#eaeef2;margin-right:4px}
.kind-SERVER{background:#ddf4ff}.kind-CLIENT{background:#fff8c5}
.lane{position:relative;height:14px;background:#f6f8fa;min-width:300px}
.bar{position:absolute;top:2px;height:10px;background:#54aeff;border-radius:2px;min-width:1px}
.bar.SERVER{background:#0969da}.bar.CLIENT{background:#d4a72c}.bar.ERROR{background:#cf222e}
.mark{position:absolute;top:0;width:2px;height:14px;background:#8250df}
details summary{cursor:pointer}dl{margin:4px 0 4px 12px;display:grid;grid-template-columns:max-content auto;gap:1px 10px}
dt{color:#656d76}dd{margin:0;word-break:break-all;font-family:ui-monospace,monospace;font-size:12px}
.summary span{margin-right:14px}
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_STYLE}</style></head>'
        f"<body>{body}</body></html>"
    )


def _status_class(status: Any) -> str:
    return f"s{str(status)[:1]}" if isinstance(status, int) else "muted"


def _cost(value: Any) -> str:
    return f"{value:.6f}" if isinstance(value, (int, float)) else ""


def list_page(traces: list[dict[str, Any]], kept: int, sampling: str) -> str:
    rows = []
    for t in traces:
        root_id = t["spans"][0]["span_id"] if t["spans"] else ""
        outcome = " ".join(
            f"{label}:{_e(t[key])}"
            for key, label in (("cache", "cache"), ("threat", "threat"), ("cascade", "cascade"))
            if t.get(key)
        )
        rows.append(
            f'<tr class="trace" data-trace-id="{_e(t["trace_id"])}">'
            f'<td class="num">{_e(t["start_time"][11:23])}</td>'
            f'<td class="num {_status_class(t["status"])}">{_e(t["status"])}</td>'
            f'<td><a href="?id={quote(root_id)}">{_e(t["method"])} {_e(t["path"])}</a></td>'
            f"<td>{_e(t['model'])}</td><td>{_e(t['caller'])}</td><td>{_e(t['provider'])}</td>"
            f'<td class="num">{t["duration_ms"]:.1f}</td><td class="num">{_cost(t["cost_usd"])}</td>'
            f"<td>{outcome}{' <span class=s5>' + _e(t['error']) + '</span>' if t.get('error') else ''}</td>"
            f'<td class="num">{len(t["spans"])}</td></tr>'
        )
    table = (
        "<table><thead><tr><th>time (UTC)</th><th>status</th><th>request</th><th>model</th><th>caller</th>"
        "<th>provider</th><th>ms</th><th>cost USD</th><th>outcome</th><th>spans</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows
        else "<p class=muted>No sampled request yet. Send one through the gateway and reload.</p>"
    )
    body = (
        f'<h1>Recent requests</h1><p class="muted">The last {kept} sampled requests, newest first ({_e(sampling)}). '
        f'<a href="traces">reload</a> · <a href="traces.json">JSON</a></p>{table}'
    )
    return _page("gateway traces", body)


def detail_page(t: dict[str, Any]) -> str:
    spans = _tree_order(t["spans"])
    total = max([t["duration_ms"], *(s["start_ms"] + s["duration_ms"] for s in spans)] or [1.0]) or 1.0
    depth: dict[str | None, int] = {}
    rows = []
    for s in spans:
        level = depth.get(s["parent_span_id"], -1) + 1 if s["parent_span_id"] in depth else 0
        depth[s["span_id"]] = level
        left = 100.0 * s["start_ms"] / total
        width = max(100.0 * s["duration_ms"] / total, 0.15)
        marks = "".join(
            f'<div class="mark" title="{_e(ev["name"])}" style="left:{100.0 * ev["time_ms"] / total:.3f}%"></div>'
            for ev in s["events"]
        )
        attributes = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in sorted(s["attributes"].items()))
        events = "".join(
            f"<dt>{ev['time_ms']:.3f} ms</dt><dd>{_e(ev['name'])} "
            + " ".join(f"{_e(k)}={_e(v)}" for k, v in ev["attributes"].items())
            + "</dd>"
            for ev in s["events"]
        )
        bar_class = f"bar {s['kind']}" + (" ERROR" if s["status"] == "ERROR" else "")
        rows.append(
            f'<tr class="span" data-kind="{_e(s["kind"])}" data-span-id="{_e(s["span_id"])}">'
            f'<td style="padding-left:{6 + 16 * level}px"><details><summary><span class="kind kind-{_e(s["kind"])}">{_e(s["kind"])}</span>'
            f'<span class="name">{_e(s["name"])}</span></summary><dl>{attributes}</dl>'
            f"{'<b>events</b><dl>' + events + '</dl>' if events else ''}</details></td>"
            f'<td class="num">{s["start_ms"]:.3f}</td><td class="num">{s["duration_ms"]:.3f}</td>'
            f'<td><div class="lane"><div class="{bar_class}" style="left:{left:.3f}%;width:{width:.3f}%"></div>{marks}</div></td></tr>'
        )
    facts = [
        ("status", t["status"]),
        ("duration", f"{t['duration_ms']:.3f} ms"),
        ("model", t["model"]),
        ("caller", t["caller"]),
        ("provider", t["provider"]),
        ("cost USD", _cost(t["cost_usd"]) or None),
        ("cache", t["cache"]),
        ("threat", t["threat"]),
        ("cascade", t["cascade"]),
        ("error", t["error"]),
        ("request id", t["request_id"]),
        ("trace id", t["trace_id"]),
    ]
    summary = "".join(f"<span><b>{_e(k)}</b> {_e(v)}</span>" for k, v in facts if v is not None)
    dropped = f"<p class=muted>{t['spans_dropped']} more spans were not kept.</p>" if t.get("spans_dropped") else ""
    body = (
        f'<p><a href="traces">&larr; recent requests</a></p><h1>{_e(t["name"])}</h1>'
        f'<p class="summary">{summary}</p>{dropped}'
        '<table class="waterfall"><thead><tr><th>span (click for attributes and events)</th><th>start ms</th>'
        f"<th>ms</th><th>0 &ndash; {total:.3f} ms</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    return _page(f"trace {t['trace_id']}", body)


def _tree_order(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Parents before their children, siblings by start: the order Jaeger shows."""
    ids = {s["span_id"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for s in spans:
        parent = s["parent_span_id"] if s["parent_span_id"] in ids else None
        children.setdefault(parent, []).append(s)
    ordered: list[dict[str, Any]] = []
    stack = list(reversed(children.get(None, [])))
    while stack:
        span = stack.pop()
        ordered.append(span)
        stack.extend(reversed(children.get(span["span_id"], [])))
    return ordered


def not_found_page(key: str) -> str:
    return _page(
        "trace not found",
        f'<p><a href="traces">&larr; recent requests</a></p><p>No kept request {_e(key)}: it may have left the buffer.</p>',
    )
