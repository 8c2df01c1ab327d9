"""The dashboard's HTML: one server-rendered page, no build step, nothing from a CDN.

Every value that comes from a job, a worker or a webhook goes through
:func:`esc` (HTML escaping, quotes included), so a path or message holding
``<script>`` is shown as text. The page also carries a Content-Security-Policy
(see ``serve.py``) that runs only its own inline script and style, by nonce.

Reading works with JavaScript off (a plain "Refresh" link); with it on, a few
lines of vanilla JS fetch the page again and swap the ``<main>`` element when
the live stream (``live.py``) says something changed, at most once per
``MIN_GAP`` seconds, with a periodic refresh as the fallback (every
``FALLBACK_SECONDS`` while the stream is open, every ``REFRESH_SECONDS`` when
it is not), pausing while a control in it has the keyboard focus.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from ..job import Job, JobStatus
from .data import BUCKET, DeadLetter, RouteStats, Snapshot
from .live import MIN_GAP

#: the page's periodic refresh without a live stream (seconds)
REFRESH_SECONDS = 5
#: ... and while its live stream is open: only a fallback
FALLBACK_SECONDS = 60

#: The outcomes an action redirects back with (``?done=...``); anything else is ignored.
NOTICES = {
    "canceled": "Job canceled.",
    "cancel-requested": "Cancel requested: the running job stops at its next check.",
    "retried": "Job queued again.",
    "replayed": "Dead letter queued for delivery again.",
    "unchanged": "Nothing changed: the job or delivery was no longer in that state.",
}


def esc(value: Any) -> str:
    """HTML-escape anything for text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def duration(seconds: float | None) -> str:
    """A short human duration: ``0.42 s``, ``12.3 s``, ``4 min 3 s``, ``2 h 5 min``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


STYLE = """
:root{color-scheme:light;color:#1b1b1b;background:#ffffff;
  font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif}
body{margin:0 auto;max-width:78rem;padding:1rem 1.25rem 3rem}
h1{font-size:1.5rem;margin:.2rem 0}h2{font-size:1.15rem;margin:1.6rem 0 .5rem}
.muted{color:#4a4a4a}
a{color:#1d4ed8}
:focus-visible{outline:3px solid #1d4ed8;outline-offset:2px}
.tiles{display:flex;flex-wrap:wrap;gap:.6rem;margin:0;padding:0}
.tiles div{border:1px solid #c8c8c8;border-radius:.4rem;padding:.5rem .8rem;min-width:8rem}
.tiles dt{font-size:.85rem;color:#4a4a4a}.tiles dd{margin:0;font-size:1.4rem;font-weight:600}
table{border-collapse:collapse;width:100%;font-size:.92rem}
caption{text-align:left;color:#4a4a4a;padding:.2rem 0}
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #dedede;vertical-align:top}
th{background:#f3f4f6;color:#1b1b1b}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:.85rem;word-break:break-all}
.badge{display:inline-block;padding:0 .45rem;border-radius:.3rem;font-size:.85rem}
.s-queued{background:#dbeafe;color:#1e3a8a}.s-processing{background:#fef3c7;color:#78350f}
.s-completed{background:#dcfce7;color:#14532d}.s-failed{background:#fee2e2;color:#7f1d1d}
.s-canceled{background:#e5e7eb;color:#374151}
h3.sub{font-size:.95rem;font-weight:500;color:#4a4a4a;margin:.8rem 0 .2rem}
svg{vertical-align:middle}svg.chart{max-width:100%;height:auto}
.status-line{color:#4a4a4a;margin:.3rem 0}
progress{width:8rem;height:.9rem}
form{display:inline;margin:0}
button{font:inherit;font-size:.85rem;padding:.2rem .7rem;border-radius:.3rem;
  border:1px solid #1e40af;background:#1e40af;color:#ffffff;cursor:pointer}
button.danger{background:#b91c1c;color:#ffffff;border-color:#b91c1c}
.notice{border:1px solid #15803d;background:#f0fdf4;color:#14532d;
  padding:.5rem .8rem;border-radius:.4rem}
.login{max-width:24rem;margin:4rem auto}
.login input{font:inherit;width:100%;padding:.4rem;margin:.3rem 0 .8rem;box-sizing:border-box}
.err{color:#7f1d1d}
svg text{font:11px system-ui,sans-serif;fill:#4a4a4a}
"""

SCRIPT = """
(function(){
  var label=document.getElementById('auto-label'),box=document.getElementById('auto'),
    first=document.getElementById('main');
  if(!label||!box||!first)return;
  label.hidden=false;
  var since=first.getAttribute('data-live'),events=first.getAttribute('data-events');
  var connected=false,busy=false,pending=false,last=0,soonTimer=null,slowTimer=null;
  function refresh(){
    var main=document.getElementById('main');
    if(!box.checked||!main)return;
    var f=document.activeElement;
    if(document.hidden||busy||(f&&f!==document.body&&main.contains(f))){
      pending=true;if(!busy)later(GAP_MS);return;
    }
    busy=true;pending=false;last=Date.now();
    fetch(location.pathname,{credentials:'same-origin',headers:{'Accept':'text/html'}})
      .then(function(r){if(!r.ok)throw new Error(r.status);return r.text();})
      .then(function(t){
        var doc=new DOMParser().parseFromString(t,'text/html');
        var fresh=doc.getElementById('main'),at=doc.getElementById('checked');
        var now=document.getElementById('main');
        if(!fresh||!now)return;
        fresh=document.importNode(fresh,true);
        var note=document.getElementById('notice');  /* an action's outcome stays */
        if(note&&!fresh.querySelector('#notice'))fresh.insertBefore(note,fresh.firstChild);
        now.replaceWith(fresh);
        if(at)document.getElementById('checked').textContent=at.textContent;
      }).catch(function(){})
      .then(function(){busy=false;if(pending)soon();});
  }
  function later(ms){
    if(soonTimer)return;
    soonTimer=setTimeout(function(){soonTimer=null;refresh();},ms);
  }
  function soon(){later(Math.max(0,last+GAP_MS-Date.now()));}
  function periodic(){
    clearTimeout(slowTimer);
    slowTimer=setTimeout(function(){refresh();periodic();},connected?SLOW_MS:FAST_MS);
  }
  if(since&&events&&window.EventSource){
    var source=new EventSource(events+'?since='+encodeURIComponent(since));
    source.addEventListener('open',function(){connected=true;periodic();});
    source.addEventListener('error',function(){connected=false;periodic();});
    source.addEventListener('changed',soon);
  }
  document.addEventListener('visibilitychange',function(){if(!document.hidden&&pending)soon();});
  box.addEventListener('change',function(){if(box.checked)soon();});
  periodic();
})();
"""


def script() -> str:
    """The page's script, with the refresh periods as they are set now."""
    return (
        SCRIPT.replace("GAP_MS", str(int(MIN_GAP * 1000)))
        .replace("SLOW_MS", str(int(FALLBACK_SECONDS * 1000)))
        .replace("FAST_MS", str(int(REFRESH_SECONDS * 1000)))
    )


def _document(title: str, body: str, nonce: str) -> bytes:
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{esc(title)}</title>"
        f'<style nonce="{esc(nonce)}">{STYLE}</style></head>\n'
        f"<body>{body}</body></html>\n"
    ).encode()


def login_page(action: str, nonce: str, wrong: bool, retry_after: int | None = None) -> bytes:
    """The sign-in form of a token-guarded dashboard (``retry_after``: too many
    wrong tokens from this address, try again in that many seconds)."""
    error = (
        '<p class="err" role="alert">That token is not the dashboard token.</p>' if wrong else ""
    )
    if retry_after is not None:
        error = (
            '<p class="err" role="alert">Too many wrong tokens from this address: '
            f"try again in {retry_after} s.</p>"
        )
    body = (
        '<main class="login"><h1>Jobs dashboard</h1>'
        "<p>Sign in with the token the health endpoint takes "
        "(<code>health_token</code>).</p>"
        f"{error}"
        f'<form method="post" action="{esc(action)}">'
        '<label for="token">Dashboard token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        "required autofocus>"
        '<button type="submit">Sign in</button></form></main>'
    )
    return _document("Sign in · async_accept jobs", body, nonce)


def _badge(status: JobStatus) -> str:
    return f'<span class="badge s-{esc(status.value)}">{esc(status.value)}</span>'


def _action(base: str, path: str, csrf: str, label: str, aria: str, danger: bool = False) -> str:
    cls = ' class="danger"' if danger else ""
    return (
        f'<form method="post" action="{esc(base + path)}">'
        f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
        f'<button type="submit"{cls} aria-label="{esc(aria)}">{esc(label)}</button></form>'
    )


def _job_path(job_id: str, verb: str) -> str:
    return f"/jobs/{quote(job_id, safe='')}/{verb}"


def _cancel_button(base: str, csrf: str, job: Job) -> str:
    return _action(base, _job_path(job.id, "cancel"), csrf, "Cancel", f"Cancel job {job.id}", True)


def _table(caption: str, heads: Iterable[tuple[str, bool]], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{esc(empty)}</p>'
    th = "".join(f'<th scope="col"{" class=num" if num else ""}>{esc(h)}</th>' for h, num in heads)
    return (
        f"<table><caption>{esc(caption)}</caption><thead><tr>{th}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _chart(snap: Snapshot) -> str:
    """Completed and failed jobs per bucket over the last hour, as inline SVG bars."""
    width, height, top, bottom, left = 600, 170, 10, 24, 34
    n = len(snap.buckets)
    peak = max([c + f for _, c, f in snap.buckets] + [1])
    plot_h = height - top - bottom
    step = (width - left - 4) / max(1, n)
    total_c = sum(c for _, c, _ in snap.buckets)
    total_f = sum(f for _, _, f in snap.buckets)
    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" class="chart" '
        'role="img" '
        'aria-labelledby="chart-title chart-desc" id="chart">'
        f'<title id="chart-title">Jobs finished per {int(BUCKET // 60)} minutes, last hour'
        "</title>"
        f'<desc id="chart-desc">{total_c} completed and {total_f} failed in the last hour.</desc>'
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 2}" y2="{top + plot_h}" '
        'stroke="#8a8a8a"/>'
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{peak}</text>'
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>'
    ]
    for i, (start, done, failed) in enumerate(snap.buckets):
        x = left + i * step + 2
        w = max(1.0, step - 4)
        h_done = plot_h * done / peak
        h_failed = plot_h * failed / peak
        y_done = top + plot_h - h_done
        y_failed = y_done - h_failed
        tip = f"{when(start)}: {done} completed, {failed} failed"
        parts.append(
            f"<g><title>{esc(tip)}</title>"
            f'<rect x="{x:.1f}" y="{y_done:.1f}" width="{w:.1f}" height="{h_done:.1f}" '
            'fill="#15803d"/>'
            f'<rect x="{x:.1f}" y="{y_failed:.1f}" width="{w:.1f}" height="{h_failed:.1f}" '
            'fill="#b91c1c"/></g>'
        )
    parts.append(
        f'<text x="{left}" y="{height - 6}">-60 min</text>'
        f'<text x="{width - 2}" y="{height - 6}" text-anchor="end">now</text>'
        f'<rect x="{left + 150}" y="{height - 15}" width="10" height="10" fill="#15803d"/>'
        f'<text x="{left + 164}" y="{height - 6}">completed ({total_c})</text>'
        f'<rect x="{left + 290}" y="{height - 15}" width="10" height="10" fill="#b91c1c"/>'
        f'<text x="{left + 304}" y="{height - 6}">failed ({total_f})</text></svg>'
    )
    return "".join(parts)


def _overview(snap: Snapshot) -> str:
    tiles = [("queue-depth", "Queue depth", str(snap.counts.get(JobStatus.QUEUED, 0)))]
    for s in JobStatus:
        if s is not JobStatus.QUEUED:
            tiles.append((f"count-{s.value}", s.value.capitalize(), str(snap.counts.get(s, 0))))
    tiles.append(("oldest-queued", "Oldest queued", duration(snap.oldest_queued_age)))
    dl = "".join(
        f'<div><dt>{esc(t)}</dt><dd id="{esc(i)}">{esc(v)}</dd></div>' for i, t, v in tiles
    )
    return (
        '<section aria-labelledby="h-overview"><h2 id="h-overview">Overview</h2>'
        f'<dl class="tiles">{dl}</dl>'
        '<h3 class="sub">Throughput and failures, '
        f"last hour</h3>{_chart(snap)}</section>"
    )


def _sla_bar(r: RouteStats) -> str:
    frac = r.p99_of_sla
    if frac is None:
        return "-"
    # The deadman switch fails a job at 2 x sla: the bar spans 0 to 2 x sla.
    color = "#b91c1c" if frac > 1.0 else ("#b45309" if frac > 0.75 else "#1d4ed8")
    width = min(100.0, frac * 50.0)
    return (
        f'<svg width="100" height="12" role="img" aria-label="p99 is {frac:.0%} of the sla">'
        '<rect width="100" height="12" rx="3" fill="#e5e7eb"/>'
        f'<rect width="{width:.1f}" height="12" rx="3" fill="{color}"/>'
        '<line x1="50" y1="0" x2="50" y2="12" stroke="#1b1b1b"/></svg> '
        f"{frac:.0%}"
    )


def _routes(snap: Snapshot) -> str:
    rows = []
    for r in snap.routes:
        rate = "-" if r.failure_rate is None else f"{r.failure_rate:.1%}"
        rows.append(
            f'<tr data-route="{esc(r.route)}"><td><code>{esc(r.route)}</code></td>'
            f'<td class="num">{r.active}</td><td class="num">{r.finished}</td>'
            f'<td class="num">{esc(duration(r.p50))}</td>'
            f'<td class="num">{esc(duration(r.p95))}</td>'
            f'<td class="num">{esc(duration(r.p99))}</td>'
            f'<td class="num">{esc(rate)}</td><td class="num">{esc(duration(r.sla))}</td>'
            f"<td>{_sla_bar(r)}</td></tr>"
        )
    table = _table(
        "Run time from start to end of the newest finished jobs (up to 2,000 of each state).",
        [
            ("Route", False),
            ("Active", True),
            ("Finished", True),
            ("p50", True),
            ("p95", True),
            ("p99", True),
            ("Failure rate", True),
            ("sla", True),
            ("p99 / sla", False),
        ],
        rows,
        "No jobs yet.",
    )
    return f'<section aria-labelledby="h-routes"><h2 id="h-routes">Routes</h2>{table}</section>'


def _worker_of(job: Job) -> str:
    return job.worker_id or ""


def _running(snap: Snapshot, base: str, csrf: str) -> str:
    rows = []
    for j in snap.running:
        pct = j.percent
        prog = (
            f'<progress max="100" value="{pct:.0f}" aria-label="{esc(j.id)} progress">'
            f"{pct:.0f}%</progress> {pct:.0f}%"
            if pct is not None
            else '<span class="muted">no progress reported</span>'
        )
        beat = None if j.heartbeat_at is None else max(0.0, snap.now - j.heartbeat_at)
        cancel = (
            '<span class="muted">cancel requested</span>'
            if j.cancel_requested
            else _action(
                base, _job_path(j.id, "cancel"), csrf, "Cancel", f"Cancel job {j.id}", True
            )
        )
        rows.append(
            f'<tr id="job-{esc(j.id)}" data-status="{esc(j.status.value)}">'
            f"<td><code>{esc(j.id)}</code></td><td><code>{esc(j.route)}</code></td>"
            f"<td>{prog}</td><td>{esc(j.message)}</td>"
            f'<td class="num">{esc(duration(snap.eta.get(j.id)))}</td>'
            f"<td><code>{esc(_worker_of(j))}</code></td>"
            f'<td class="num">{esc(duration(beat))}</td><td>{cancel}</td></tr>'
        )
    table = _table(
        "Jobs a worker is running now.",
        [
            ("Job", False),
            ("Route", False),
            ("Progress", False),
            ("Message", False),
            ("ETA", True),
            ("Worker", False),
            ("Heartbeat age", True),
            ("Action", False),
        ],
        rows,
        "Nothing is running.",
    )
    return f'<section aria-labelledby="h-running"><h2 id="h-running">Running</h2>{table}</section>'


def _queued(snap: Snapshot, base: str, csrf: str) -> str:
    rows = [
        f'<tr id="job-{esc(j.id)}" data-status="{esc(j.status.value)}">'
        f"<td><code>{esc(j.id)}</code></td><td><code>{esc(j.route)}</code></td>"
        f"<td>{esc(when(j.created_at))}</td>"
        f'<td class="num">{esc(duration(max(0.0, snap.now - j.created_at)))}</td>'
        f'<td class="num">{j.attempts}</td>'
        f"<td>{_cancel_button(base, csrf, j)}</td></tr>"
        for j in snap.queued
    ]
    table = _table(
        "Jobs waiting for a worker, oldest first.",
        [
            ("Job", False),
            ("Route", False),
            ("Accepted", False),
            ("Waiting", True),
            ("Attempts", True),
            ("Action", False),
        ],
        rows,
        "The queue is empty.",
    )
    return f'<section aria-labelledby="h-queued"><h2 id="h-queued">Queued</h2>{table}</section>'


def _error_type(job: Job) -> str:
    err = job.error or {}
    kind = str(err.get("type") or "")
    return kind.rsplit(":", 1)[-1].rsplit("/", 1)[-1] if kind else "job-failed"


def _failures(snap: Snapshot, base: str, csrf: str) -> str:
    rows = []
    for j in snap.failures:
        err = j.error or {}
        retry = (
            '<span class="muted">canceled by its client</span>'
            if j.cancel_requested
            else _action(base, _job_path(j.id, "retry"), csrf, "Retry", f"Retry job {j.id}")
        )
        rows.append(
            f'<tr id="job-{esc(j.id)}" data-status="{esc(j.status.value)}">'
            f"<td><code>{esc(j.id)}</code></td><td><code>{esc(j.route)}</code></td>"
            f'<td>{esc(when(j.finished_at))}</td><td class="num">{j.attempts}</td>'
            f"<td><code>{esc(_error_type(j))}</code></td>"
            f"<td>{esc(err.get('title'))}</td><td>{esc(err.get('detail'))}</td>"
            f"<td>{retry}</td></tr>"
        )
    table = _table(
        "Failed jobs, newest first: the problem each ended with.",
        [
            ("Job", False),
            ("Route", False),
            ("Failed at", False),
            ("Attempts", True),
            ("Error type", False),
            ("Title", False),
            ("Detail", False),
            ("Action", False),
        ],
        rows,
        "No failures.",
    )
    return (
        '<section aria-labelledby="h-failures"><h2 id="h-failures">Recent failures</h2>'
        f"{table}</section>"
    )


def _workers(snap: Snapshot) -> str:
    if snap.workers is None:
        body = '<p class="muted">This store keeps no worker registry.</p>'
    else:
        rows = []
        for w in snap.workers:
            age = max(0.0, snap.now - float(w.get("last_heartbeat", 0.0)))
            alive = snap.alive.get(str(w.get("id")), age <= snap.worker_lost_after)
            rows.append(
                f"<tr><td><code>{esc(w.get('id'))}</code></td><td>{esc(w.get('role'))}</td>"
                f'<td class="num">{esc(w.get("pid"))}</td><td>{esc(w.get("host"))}</td>'
                f"<td>{esc(w.get('executor'))}</td>"
                f'<td class="num">{esc(duration(age))}</td>'
                f'<td class="num">{esc(w.get("running"))}</td>'
                f"<td>{'alive' if alive else 'silent'}</td></tr>"
            )
        body = _table(
            "Processes that accept or run jobs, most recent heartbeat first.",
            [
                ("Worker", False),
                ("Role", False),
                ("pid", True),
                ("Host", False),
                ("Executor", False),
                ("Last heartbeat", True),
                ("Running", True),
                ("State", False),
            ],
            rows,
            "No process has reported yet.",
        )
    return f'<section aria-labelledby="h-workers"><h2 id="h-workers">Workers</h2>{body}</section>'


def _dead(snap: Snapshot, base: str, csrf: str, webhooks: bool) -> str:
    if not webhooks:
        body = '<p class="muted">Webhooks are off.</p>'
    elif snap.dead is None:
        body = '<p class="err">The webhook outbox could not be read.</p>'
    else:
        rows = [_dead_row(d, base, csrf) for d in snap.dead]
        body = _table(
            "Webhook deliveries that kept failing (URLs shown without credentials or query).",
            [
                ("Delivery", False),
                ("Target", False),
                ("Job", False),
                ("Attempts", True),
                ("Last answer", False),
                ("Action", False),
            ],
            rows,
            "No dead letters.",
        )
    return (
        '<section aria-labelledby="h-dead"><h2 id="h-dead">Webhook dead letters</h2>'
        f"{body}</section>"
    )


def _dead_row(d: DeadLetter, base: str, csrf: str) -> str:
    path = f"/dead/{quote(d.id, safe='')}/replay"
    return (
        f'<tr id="dead-{esc(d.id)}"><td><code>{esc(d.id)}</code></td>'
        f"<td><code>{esc(d.target)}</code></td><td><code>{esc(d.job_id)}</code></td>"
        f'<td class="num">{d.attempts}</td><td>{esc(d.last)}</td>'
        f"<td>{_action(base, path, csrf, 'Replay', f'Replay delivery {d.id}')}</td></tr>"
    )


def dashboard_page(
    snap: Snapshot,
    base: str,
    csrf: str,
    nonce: str,
    notice: str | None,
    webhooks: bool,
    live: str | None = None,
) -> bytes:
    """The whole dashboard for one snapshot; ``base`` is the dashboard's URL path;
    ``live`` where the live stream starts (``live.mark``; None: no live stream)."""
    auto = "live updates" if live else f"refresh every {REFRESH_SECONDS} s"
    note = (
        f'<p class="notice" role="status" id="notice">{esc(NOTICES[notice])}</p>'
        if notice in NOTICES
        else ""
    )
    body = (
        "<header><h1>Jobs</h1>"
        f'<div class="status-line">Checked at <span id="checked">{esc(when(snap.now))}</span> · '
        f'<a href="{esc(base)}/">Refresh</a> '
        '<label id="auto-label" hidden><input type="checkbox" id="auto" checked> '
        f"{auto}</label> · "
        f"{_action(base, '/logout', csrf, 'Sign out', 'Sign out of the dashboard')}</div></header>"
        f"<main{_live_attrs(base, live)}>{note}{_overview(snap)}{_routes(snap)}"
        f"{_running(snap, base, csrf)}{_queued(snap, base, csrf)}"
        f"{_failures(snap, base, csrf)}{_workers(snap)}{_dead(snap, base, csrf, webhooks)}"
        "</main>"
        f'<script nonce="{esc(nonce)}">{script()}</script>'
    )
    return _document("async_accept jobs", body, nonce)


def _live_attrs(base: str, live: str | None) -> str:
    attrs = ' id="main"'
    if live:
        attrs += f' data-live="{esc(live)}" data-events="{esc(base)}/events"'
    return attrs
