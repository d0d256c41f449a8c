"""`shipper status [--watch]`: the running daemon's /status as a table in the terminal.

The daemon is found through the config's [admin] section (address, TLS, token) by `shipper.telemetry.client`,
as `shipper reload` finds it, so the command needs the same config file as the daemon. `--watch` redraws in
place (plain ANSI: home, clear) every `--interval` seconds until interrupted, and keeps trying while the
daemon is down.
"""

from __future__ import annotations

import re
import time
from typing import Any

from shipper.telemetry.client import NotRunning, admin_url, call
from shipper.telemetry.config import AdminConfig

NOT_RUNNING = 3
UNHEALTHY = 1
CLEAR = "\x1b[H\x1b[2J"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
BOLD, RED, GREEN, YELLOW, RESET = "\x1b[1m", "\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[0m"


def fetch(cfg: AdminConfig, timeout: float = 5.0) -> dict[str, Any]:
    """The daemon's /status document; NotRunning when it does not give one."""
    code, doc = call(cfg, "/status", timeout=timeout)
    if code != 200 or not doc:
        what = "" if doc else " without a JSON document"
        raise NotRunning(f"{admin_url(cfg, '/status')} answered HTTP {code}{what}")
    return doc


def _n(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.1f}"
    return f"{int(v):,}"


def _secs(v: Any) -> str:
    if v is None:
        return "-"
    v = float(v)
    return f"{v:.0f}s" if v < 120 else f"{v / 60:.0f}m" if v < 7200 else f"{v / 3600:.1f}h"


def _table(head: list[str], rows: list[list[str]], width: int, color: bool) -> list[str]:
    cols = [max([len(h)] + [len(_plain(r[i])) for r in rows]) for i, h in enumerate(head)]

    def fmt(r: list[str]) -> str:
        return "  ".join(c + " " * (cols[i] - len(_plain(c))) for i, c in enumerate(r)).rstrip()[:width]

    return [(BOLD + fmt(head) + RESET) if color else fmt(head)] + [fmt(r) for r in rows]


def _plain(s: str) -> str:
    return _ANSI.sub("", s)


def _state(s: str, color: bool) -> str:
    if not color:
        return s
    return {"up": GREEN, "failing": RED}.get(s, YELLOW) + s + RESET


def render(st: dict[str, Any], width: int = 160, color: bool = True) -> str:
    healthy = st.get("healthy")
    badge = ("healthy" if healthy else "UNHEALTHY")
    if color:
        badge = (GREEN if healthy else RED) + badge + RESET
    out = [f"shipper {st.get('version', '')}  {badge}  {st.get('time', '')}  "
           f"reading {_n(st.get('events_read_per_sec'))} events/s"]
    out += [f"  ! {p}" for p in st.get("problems", [])]
    out.append("")
    rows = [[c["name"], c["reader"], _n(c["bytes_behind"]), _secs(c["seconds_behind"]), c["last_error"]]
            for c in st.get("containers", [])]
    out += _table(["CONTAINER", "READER", "BYTES BEHIND", "BEHIND", "LAST ERROR"], rows, width, color)
    if not rows:
        out.append("(no container is being read)")
    out.append("")
    rows = [[n, s["type"], _state(s["state"], color), _n(s["in_flight"]), _n(s["pending_events"]),
             _n(s["events_per_sec"]), s["last_success"] or "never", s["last_error"]]
            for n, s in st.get("sinks", {}).items()]
    out += _table(["SINK", "TYPE", "STATE", "IN FLIGHT", "PENDING", "EVENTS/S", "LAST SUCCESS", "LAST ERROR"],
                  rows, width, color)
    for n, s in st.get("sinks", {}).items():  # sinks with several hosts: each host's own state
        for h in s.get("hosts", []):
            retry = f", retried in {h['retry_in_secs']}s" if "retry_in_secs" in h else ""
            active = " (active)" if s.get("active") == h["host"] else ""
            out.append(f"  {n} host {h['host']}{active}: {_state(h['state'], color)}, window {h['window']}, "
                       f"busy {h['busy']}{retry}" + (f", {h['last_error']}" if h["last_error"] else ""))
    b = st.get("buffer", {})
    out += ["", f"buffer ({b.get('type')}): {_n(b.get('events'))} events, {_n(b.get('bytes'))} bytes, "
                f"{100 * float(b.get('fill') or 0):.1f}% full"
                + (f", reading paused ({b.get('pause_reason')})" if b.get("reading_paused") else "")]
    drops = [f"{kind} {reason}: {_n(v)}" for kind, m in st.get("drops", {}).items() for reason, v in m.items()]
    out.append("dropped/cut/skipped: " + ("; ".join(drops) if drops else "none"))
    d = st.get("docker", {})
    up = d.get("up")
    out.append(f"docker: {'answering' if up else 'NOT ANSWERING' if up is False else d.get('discovery', '-')}"
               f", ping {d.get('ping_ms', '-')} ms, version {d.get('version', '-')} (API {d.get('api_version', '-')})"
               f", discovery {d.get('discovery', '-')}, events stream "
               f"{'connected' if d.get('events_connected') else 'disconnected'}"
               f", last event {_secs(d.get('secs_since_last_event'))} ago, restarts seen {d.get('restarts_seen', 0)}"
               f", reconnects {d.get('reconnects', 0)}")
    if d.get("log_fs_free_bytes") is not None:
        out.append(f"        json-file logs {_n(d.get('json_log_bytes'))} bytes, free on their filesystem "
                   f"{_n(d.get('log_fs_free_bytes'))} bytes; containers "
                   + ", ".join(f"{k} {v}" for k, v in (d.get("containers") or {}).items()))
    return "\n".join(out) + "\n"


def run(cfg: AdminConfig, watch: bool, interval: float, out: Any, color: bool) -> int:
    """Print the status once (exit 0 healthy, 1 unhealthy, 3 not running) or, with `watch`, until interrupted."""
    if not cfg.address:
        out.write("shipper: the admin server is off in this config ([admin] address = \"\"), so there is no "
                  "status to read\n")
        return NOT_RUNNING
    while True:
        try:
            st = fetch(cfg)
            text, code = render(st, color=color), 0 if st.get("healthy") else UNHEALTHY
        except NotRunning as e:
            text, code = f"shipper: {e}\n", NOT_RUNNING
        if not watch:
            out.write(text)
            return code
        out.write(CLEAR + text + f"\n(every {interval:g}s; Ctrl-C to quit)\n")
        out.flush()
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return code
