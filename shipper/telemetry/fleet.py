"""The admin server of a supervisor: one shipper seen through its workers.

Each worker serves /metrics, /health, /ready and /status on a unix socket only the supervisor can reach;
the supervisor asks every worker and answers at the configured address, with its TLS and token:
- /metrics: every worker's series with a `worker` label, each family declared once, and
  `shipper_workers_up{worker}` (0 while a worker is down or does not answer);
- /health, /ready: healthy (ready) when every worker is; a worker that is down is a problem;
- /status and the page: one document, summed over the workers (containers listed together, sinks by name
  with the worst state, counts and rates added); `workers` says how each one is.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from shipper.telemetry.admin import AdminHttp, _json
from shipper.telemetry.config import AdminConfig
from shipper.telemetry.metrics import HELP, Spec

if TYPE_CHECKING:
    from shipper.workers import Child, Supervisor

log = logging.getLogger("shipper.workers")

ASK_TIMEOUT_SECS = 5.0
SINK_STATES = ("up", "starting", "retrying", "failing")  # worst last
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?(\s.*)$")


async def ask(socket: str, path: str, method: str = "GET") -> tuple[int, bytes]:
    """One request to a worker's admin socket."""
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket),
                                     timeout=aiohttp.ClientTimeout(total=ASK_TIMEOUT_SECS)) as s, \
            s.request(method, f"http://worker{path}") as r:
        return r.status, await r.read()


def merge_metrics(texts: dict[str, str]) -> str:
    """Prometheus text of several processes as one exposition: each family's HELP and TYPE once, then the
    samples of each text, labelled `worker="K"` by its key K (the supervisor's own, under "", unlabelled)."""
    families: dict[str, list[str]] = {}  # family -> its HELP/TYPE lines, then samples
    for k, text in texts.items():
        family = ""
        for line in text.splitlines():
            if line.startswith("# "):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    lines = families.setdefault(family, [])
                    if not any(x.startswith(f"# {parts[1]} ") for x in lines):
                        lines.insert(sum(1 for x in lines if x.startswith("# ")), line)
                continue
            m = _SAMPLE.match(line)
            if not m:
                continue
            name, labels, rest = m.groups()
            inner = labels[1:-1] if labels else ""
            if k:
                inner = f'worker="{k}"' + ("," + inner if inner else "")
            families.setdefault(family or name, []).append(f"{name}{{{inner}}}{rest}" if inner else line)
    return "".join(line + "\n" for lines in families.values() for line in lines)


def supervisor_metrics(up: dict[str, int], restarts: dict[str, int]) -> str:
    """The supervisor's own series, by worker: `shipper_workers_up`, `shipper_worker_restarts_total`."""
    lines = []
    for name, values in (("shipper_workers_up", up), ("shipper_worker_restarts_total", restarts)):
        spec = HELP[name]
        assert isinstance(spec, Spec)
        lines += [f"# HELP {name} {spec.help}", f"# TYPE {name} {spec.kind}"]
        lines += [f'{name}{{worker="{k}"}} {v}' for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _worst(a: str, b: str) -> str:
    rank = {s: i for i, s in enumerate(SINK_STATES)}
    return a if rank.get(a, 1) >= rank.get(b, 1) else b


def _add(into: dict[str, Any], doc: dict[str, Any]) -> None:
    """Numbers added, dicts merged the same way, anything else kept from the first document."""
    for key, v in doc.items():
        have = into.get(key)
        if key not in into:
            into[key] = v
        elif isinstance(v, bool) or isinstance(have, bool):
            continue
        elif isinstance(v, int | float) and isinstance(have, int | float):
            into[key] = have + v
        elif isinstance(v, dict) and isinstance(have, dict):
            _add(have, v)


def by_worker(said: list[tuple[int, str]]) -> list[str]:
    """What workers said, each line `worker K: ...`, in worker order."""
    return [f"worker {k}: {text}" for k, text in sorted(said, key=lambda kt: kt[0])]


def problems(docs: dict[int, dict[str, Any]], down: dict[int, str]) -> list[str]:
    """Every worker's health problems, and why each worker that is down gave none."""
    return by_worker([(k, p) for k, d in docs.items() for p in d.get("problems", [])] + list(down.items()))


def merge_status(docs: dict[int, dict[str, Any]], down: dict[int, str]) -> dict[str, Any]:
    """One /status document from the workers' (`down`: why a worker gave none)."""
    first = next(iter(docs.values()), {})
    out: dict[str, Any] = {k: v for k, v in first.items() if k not in ("containers", "sinks", "buffer", "drops",
                                                                         "history")}
    out["problems"] = problems(docs, down)
    out["healthy"] = not out["problems"]
    out["containers"] = sorted((c | {"worker": k} for k, d in docs.items() for c in d.get("containers", [])),
                               key=lambda c: c["name"])
    out["waiting_inspect"] = {cid: n for d in docs.values() for cid, n in d.get("waiting_inspect", {}).items()}
    out["events_read_per_sec"] = sum(d.get("events_read_per_sec", 0) for d in docs.values())
    sinks: dict[str, dict[str, Any]] = {}
    for d in docs.values():
        for name, s in d.get("sinks", {}).items():
            have = sinks.get(name)
            if have is None:
                sinks[name] = dict(s)
                continue
            for key in ("in_flight", "pending_events", "sent_events", "events_per_sec"):
                have[key] = have.get(key, 0) + s.get(key, 0)
            have["state"] = _worst(have.get("state", ""), s.get("state", ""))
            have["last_error"] = have.get("last_error") or s.get("last_error", "")
            have["last_success"] = max((t for t in (have.get("last_success"), s.get("last_success")) if t),
                                       default=None)
    out["sinks"] = sinks
    buffer: dict[str, Any] = {}
    drops: dict[str, Any] = {}
    for d in docs.values():
        _add(buffer, d.get("buffer", {}))
        _add(drops, d.get("drops", {}))
    if buffer:
        buffer["fill"] = max(d.get("buffer", {}).get("fill", 0) for d in docs.values())
        buffer["reading_paused"] = any(d.get("buffer", {}).get("reading_paused") for d in docs.values())
    out["buffer"], out["drops"] = buffer, drops
    out["event_loop_lag_secs"] = max((d.get("event_loop_lag_secs", 0) for d in docs.values()), default=0)
    out["history"] = _merge_history([d["history"] for d in docs.values() if "history" in d])
    out["workers"] = {str(k): "up" if k in docs else f"down: {why}" for k, why in
                      sorted({**{k: "" for k in docs}, **down}.items())}
    return out


def _merge_history(hs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rates added step by step, aligned on the newest step (workers started at about the same time)."""
    if not hs:
        return {}
    n = min(len(h.get("t", [])) for h in hs)
    base = hs[0]

    def tail(xs: list[Any]) -> list[Any]:
        return xs[len(xs) - n:] if n else []

    out: dict[str, Any] = {"step_secs": base.get("step_secs"), "t": tail(base.get("t", [])),
                           "in": [round(sum(v), 2) for v in zip(*(tail(h.get("in", [])) for h in hs), strict=True)],
                           "buffer_fill": [max(v) for v in zip(*(tail(h.get("buffer_fill", [])) for h in hs),
                                                                 strict=True)],
                           "out": {}}
    for name in base.get("out", {}):
        series = [tail(h.get("out", {}).get(name, [0] * n)) for h in hs]
        out["out"][name] = [round(sum(v), 2) for v in zip(*series, strict=True)]
    return out


def _reason(body: bytes) -> str:
    """The `reason` of a worker's JSON answer, or the answer as it came."""
    try:
        return str(orjson.loads(body).get("reason", ""))
    except (orjson.JSONDecodeError, AttributeError):
        return body.decode(errors="replace")[:200]


class WorkersAdmin(AdminHttp):
    """The supervisor's admin server (see the module's docstring)."""

    def __init__(self, cfg: AdminConfig, supervisor: Supervisor, host_name: str = "") -> None:
        super().__init__(cfg, host_name)
        self.supervisor = supervisor

    def _workers(self) -> list[Child]:
        return [c for c in self.supervisor.children if c.index >= 0]

    async def _ask_all(self, path: str, method: str = "GET") -> tuple[dict[int, tuple[int, bytes]], dict[int, str]]:
        """Every running worker's answer to `path`; and why each other worker gave none."""
        down: dict[int, str] = {}
        workers = []
        for c in self._workers():
            if not c.running or not c.socket:
                down[c.index] = "not running (being started again)" if c.restarts else "not running"
            else:
                workers.append(c)
        answers = await asyncio.gather(*(ask(c.socket, path, method) for c in workers), return_exceptions=True)
        got: dict[int, tuple[int, bytes]] = {}
        for c, a in zip(workers, answers, strict=True):
            if isinstance(a, BaseException):
                down[c.index] = f"does not answer ({type(a).__name__})"
            else:
                got[c.index] = a
        return got, down

    async def _docs(self, path: str) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
        """Every running worker's JSON answer to `path`; one that is not JSON is a worker that does not answer."""
        got, down = await self._ask_all(path)
        docs = {}
        for k, (status, body) in got.items():
            try:
                docs[k] = orjson.loads(body)
            except orjson.JSONDecodeError:
                down[k] = f"does not answer (HTTP {status}, not JSON)"
        return docs, down

    async def _metrics(self, request: web.Request) -> web.Response:
        got, _ = await self._ask_all("/metrics")
        texts = {str(k): body.decode() for k, (status, body) in got.items() if status == 200}
        workers = self._workers()
        own = supervisor_metrics({str(c.index): 1 if str(c.index) in texts else 0 for c in workers},
                                 {str(c.index): c.restarts for c in workers})
        body = merge_metrics(texts | {"": own})
        return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        said = problems(*await self._docs("/health"))
        return _json({"healthy": not said, "problems": said}, 503 if said else 200)

    async def _ready(self, request: web.Request) -> web.Response:
        docs, down = await self._docs("/ready")
        why = by_worker([(k, str(d.get("reason", ""))) for k, d in docs.items() if not d.get("ready")]
                        + list(down.items()))
        return _json({"ready": not why, "reason": "; ".join(why)}, 503 if why else 200)

    async def _status(self, request: web.Request) -> web.Response:
        docs, down = await self._docs("/status")
        if not docs:
            return _json({"healthy": False, "problems": by_worker(list(down.items()))}, 503)
        return _json(merge_status(docs, down))

    async def _page(self, request: web.Request) -> web.Response:
        docs, down = await self._docs("/status")
        if not docs:
            why = "; ".join(by_worker(list(down.items())))
            return web.Response(status=503, text=f"no worker answers yet: {why}\n")
        return self.page(merge_status(docs, down))

    async def _reload(self, request: web.Request) -> web.Response:
        """Every worker reloads; the answer is the worst of theirs (a refused reload keeps that worker's
        running config, as it would keep a single process's)."""
        got, down = await self._ask_all("/-/reload", "POST")
        if down:
            return _json({"reloaded": False, "reason": "; ".join(by_worker(list(down.items())))}, 409)
        worst = max(status for status, _ in got.values())
        reasons = by_worker([(k, _reason(body)) for k, (status, body) in got.items() if status != 200])
        return _json({"reloaded": worst == 200, **({"reason": "; ".join(reasons)} if reasons else {})}, worst)
