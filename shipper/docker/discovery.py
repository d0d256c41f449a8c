"""Container discovery: an endless async stream of `Change`s, from the Engine API or from dockerd's files.

Kinds of change, per container id:
  start   it runs (or, at startup, exists with logs: `info.running` says which). May repeat for a known id
          when the container was restarted; `info` is then the whole, current picture.
  stop    it exited; its log is complete once read to the end.
  rename  `info.meta.name` changed.
  update  metadata became more precise without a rename: ApiDiscovery yields `start` straight from the
          event (name, image, labels) so a short-lived container's log is opened before `--rm` deletes it,
          then inspects it; when inspect adds something (tty, log driver or path, allowlisted env) the whole
          refreshed `info` comes as `update`. A `start` built from the event alone says so
          (`info.guessed`: driver, path and TTY are assumed), and its inspect always comes as `update`,
          even when the guess was right, so a consumer can wait for it before building a reader.
  remove  it is gone, with its files; `info` is the last known one.

Both implementations keep trying through transient failures and never raise out of the iterator; which
containers are shipped is decided downstream.

ApiDiscovery subscribes to `/events` *before* listing, so nothing that happens during the listing is
missed, and drops the duplicates that overlap brings. After a broken stream it subscribes again with
`since` = the last event seen (dockerd replays its recent events), re-lists, and reconciles: containers
that vanished meanwhile are removed, new ones started. Ids are never reused, so any event for a container
already reported removed is ignored. dockerd replays only its last 256 events: after a longer or busier
outage, a container that lived and was removed entirely within it cannot be seen by anyone.

Bounded: events and inspect answers reach the session through one queue of EVENT_QUEUE_MAX items. When it is
full the reader of /events waits (stops reading the socket), which dockerd answers by dropping events for
this subscriber once its own buffer is full; so after a full queue the session is ended on purpose:
counted and logged, it resubscribes from the last event handled (dockerd replays what it still has) and
relists, which reconciles whatever was dropped. An inspect waiting for its turn is not queued twice for one
container, so pending inspects are bounded by the number of containers, not by the rate of events.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from shipper.backoff import Backoff, pause
from shipper.config import Config, Discovery
from shipper.docker.client import ClientCertRefused, DockerClient, EventStream, since_from_ns
from shipper.docker.metadata import (
    ContainerInfo,
    Problems,
    describe_problems,
    event_attributes,
    event_ns,
    info_from_config_files,
    info_from_event,
    info_from_inspect,
)
from shipper.errors import ContainerGone, DockerError, DockerUnavailable
from shipper.telemetry import events as tel
from shipper.telemetry.metrics import Metrics

log = logging.getLogger("shipper.docker")

ChangeKind = Literal["start", "stop", "rename", "update", "remove"]
EVENT_FILTERS = {"type": ["container"], "event": ["create", "start", "die", "destroy", "rename"]}
RECONNECTS = "shipper_docker_reconnects_total"
CONFIG_INVALID = "shipper_docker_config_invalid_total"
EVENTS_INVALID = "shipper_docker_events_invalid_total"
INITIAL_BACKOFF_SECS = 0.5
MIN_BACKOFF_SECS = 0.1  # a session failing right after its (costly) listing resets the backoff: never spin
MAX_REMEMBERED = 10_000
EVENT_QUEUE_MAX = 4096  # events and inspect answers waiting for the session (read when a session starts)
INSPECT_ATTEMPTS = 5  # an inspect failing for another reason than the container being gone is retried


@dataclass
class Change:
    kind: ChangeKind
    id: str
    info: ContainerInfo | None


class ContainerDiscovery(ABC):
    """`async for change in discovery:` never ends by itself and never raises for a transient failure.

    `last_event`: the monotonic time the last event arrived on dockerd's /events stream (any event, counted
    before anything is made of it), 0.0 before the first or when there is no stream (FileDiscovery): the
    stream's own sign of life, whether or not the event changed a container shipper reads.
    """

    last_event = 0.0

    @property
    def events_connected(self) -> bool:
        """The /events stream is live and the listing reconciled with it (False without a stream)."""
        return False

    def __aiter__(self) -> AsyncIterator[Change]:
        return self.changes()

    @abstractmethod
    def changes(self) -> AsyncIterator[Change]: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the discovery owns (its Engine API client, when it made it)."""


def make_discovery(cfg: Config, metrics: Metrics, client: DockerClient | None = None) -> ContainerDiscovery:
    if cfg.docker.discovery is Discovery.FILES:
        return FileDiscovery(cfg, metrics)
    if client is not None:
        return ApiDiscovery(client, cfg, metrics)
    return ApiDiscovery(DockerClient.from_config(cfg.docker, metrics), cfg, metrics, own_client=True)


class _Bounded(OrderedDict[str, Any]):
    """Remembers the most recent keys only: removed ids and create-time inspects must not grow forever."""

    def remember(self, key: str, value: Any = None) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > MAX_REMEMBERED:
            self.popitem(last=False)


class _Tracker:
    """What has been reported, so that a new snapshot or event turns into exactly the changes it implies."""

    def __init__(self) -> None:
        self.known: dict[str, ContainerInfo] = {}
        self.removed = _Bounded()

    def seen(self, info: ContainerInfo) -> list[Change]:
        """A complete, current snapshot of one container (a listing, an inspect or its files)."""
        cid = info.id
        if cid in self.removed:
            return []
        old = self.known.get(cid)
        self.known[cid] = info
        if old is None:
            return [Change("start", cid, info)]
        out: list[Change] = []
        restarted = bool(info.started_at and old.started_at and info.started_at != old.started_at)
        if info.meta.name != old.meta.name and not (info.running and (restarted or not old.running)):
            out.append(Change("rename", cid, info))
        if info.running and (restarted or not old.running):
            out.append(Change("start", cid, info))
        elif old.running and not info.running:
            out.append(Change("stop", cid, info))
        elif not out and not info.same_as(old):
            out.append(Change("update", cid, info))
        return out

    def gone(self, cid: str) -> list[Change]:
        self.removed.remember(cid)
        old = self.known.pop(cid, None)
        return [Change("remove", cid, old)] if old is not None else []


class ApiDiscovery(ContainerDiscovery):
    def __init__(self, client: DockerClient, cfg: Config, metrics: Metrics, *,
                 health_interval_secs: float = 30.0, inspect_concurrency: int = 8,
                 own_client: bool = False) -> None:
        self._client = client
        self._own_client = own_client
        self._metrics = metrics
        self._host = cfg.host.resolved_name
        self._allow = list(cfg.select.env_allowlist)
        self._data_root = cfg.docker.data_root
        # jittered: many shippers must not reconnect to a restarted dockerd in step
        self._backoff = Backoff(INITIAL_BACKOFF_SECS, max(cfg.docker.reconnect_max_secs, INITIAL_BACKOFF_SECS),
                                floor=MIN_BACKOFF_SECS)
        self._health = health_interval_secs
        self._sem = asyncio.Semaphore(inspect_concurrency)
        self._tracker = _Tracker()
        self._created = _Bounded()  # id -> ContainerInfo inspected at `create`, before `start`
        self._since: int | None = None  # ns; where a new subscription resumes
        self._warned_event = False
        self._said_fields: set[str] = set()  # fields of events said left out (logged once per field)
        self._waiting_inspect: set[str] = set()  # ids with an inspect queued but not started: never twice
        self._queue: asyncio.Queue[tuple[str, Any]] | None = None
        self._connected_once = False
        self._cert_refused_said = False
        self.state = "connecting"  # connected, unreachable, client_cert_refused (shipper_docker_api_state)
        self.synced = asyncio.Event()  # set while the event stream is live and the listing reconciled

    @property
    def events_connected(self) -> bool:
        return self.synced.is_set()

    @property
    def backlog(self) -> int:
        """Items waiting in the current session's queue (at most EVENT_QUEUE_MAX)."""
        return self._queue.qsize() if self._queue is not None else 0

    def _set_state(self, state: str, detail: str = "") -> None:
        if state != self.state:
            self.state = state
            tel.docker_api_state(self._metrics, state, detail)

    @property
    def known(self) -> dict[str, ContainerInfo]:
        return self._tracker.known

    async def close(self) -> None:
        if self._own_client:
            await self._client.close()

    async def changes(self) -> AsyncIterator[Change]:
        while True:
            try:
                async for change in self._session():
                    yield change
                err: BaseException = DockerUnavailable("the event stream ended")
            except DockerError as e:
                err = e
            except (ValueError, KeyError, TypeError, AttributeError) as e:  # an answer of an unexpected shape
                err = e
                log.warning("unexpected answer from the Docker API; reconnecting", exc_info=True)
            self.synced.clear()
            delay = self._backoff.next_delay()
            n = self._backoff.attempt
            if isinstance(err, ClientCertRefused):  # never connected: not "lost", and the cause is known
                self._set_state("client_cert_refused", err.alert)
                tel.docker_client_cert_refused(self._metrics, err.cert, err.alert, delay,
                                               first=not self._cert_refused_said)
                self._cert_refused_said = True
            else:
                self._set_state("unreachable")
                level = logging.WARNING if n == 1 or n % 10 == 0 else logging.DEBUG
                if self._connected_once:
                    log.log(level, "Docker API lost, will reconnect attempt=%d retry_in=%.2fs error=%s",
                            n, delay, err)
                else:
                    log.log(level, "Docker API unreachable, will retry attempt=%d retry_in=%.2fs error=%s",
                            n, delay, err)
            await pause(delay)

    def _on_synced(self, stream: EventStream) -> None:
        if stream.server_time is not None:
            self._since = max(self._since or 0, int(stream.server_time) * 1_000_000_000)
        if self._backoff.attempt:
            self._metrics.inc(RECONNECTS)
            log.warning("Docker API reconnected after %d failed attempts; resynced containers=%d",
                        self._backoff.attempt, len(self._tracker.known))
            self._backoff.reset()
        self._connected_once = True
        self._cert_refused_said = False
        self._set_state("connected")
        self.synced.set()

    async def _session(self) -> AsyncIterator[Change]:
        since = since_from_ns(self._since) if self._since is not None else None
        stream = await self._client.open_events(since=since, filters=EVENT_FILTERS)
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=EVENT_QUEUE_MAX)
        self._queue = queue
        tasks: set[asyncio.Task[None]] = set()
        tasks.add(asyncio.create_task(self._pump(stream, queue)))
        try:
            current = await self._list()
            for cid in [c for c in self._tracker.known if c not in current]:
                for ch in self._tracker.gone(cid):
                    yield ch
            for info in current.values():
                for ch in self._tracker.seen(info):
                    yield ch
            self._on_synced(stream)
            while True:
                try:
                    async with asyncio.timeout(self._health):  # not wait_for: on 3.11 it can eat a cancel
                        kind, payload = await queue.get()
                except TimeoutError:
                    await self._client.ping()  # a dead peer on a quiet stream shows only this way
                    continue
                if kind == "error":
                    raise payload
                if kind == "event":
                    changes, inspect = self._on_event_safe(payload)
                    if inspect and inspect not in self._waiting_inspect:  # one still waiting will see it all
                        self._waiting_inspect.add(inspect)
                        task = asyncio.create_task(self._inspect_later(inspect, queue))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                else:
                    changes = self._on_inspected(payload)
                for ch in changes:
                    yield ch
        finally:
            stream.close()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._waiting_inspect.clear()  # their tasks are gone; the next listing inspects everything
            self._queue = None

    async def _pump(self, stream: EventStream, queue: asyncio.Queue[tuple[str, Any]]) -> None:
        """Events into the bounded queue; when it is full, waits, then ends the session to resync (above)."""
        try:
            async for ev in stream:
                self.last_event = time.monotonic()
                if queue.full():
                    tel.docker_event_queue_full(self._metrics, queue.maxsize)
                    await queue.put(("event", ev))
                    await queue.put(("error", DockerUnavailable(
                        f"the event queue was full ({queue.maxsize} items): resubscribing to catch up")))
                    return
                queue.put_nowait(("event", ev))
            await queue.put(("error", DockerUnavailable("Docker closed the event stream")))
        except DockerError as e:
            await queue.put(("error", e))
        except Exception as e:  # whatever broke the stream, the session must hear of it
            await queue.put(("error", DockerUnavailable(f"event stream failed: {e!r}")))

    async def _list(self) -> dict[str, ContainerInfo]:
        """Every container that has (or had) a running process, inspected; gone ones are left out."""
        listed = await self._client.list_containers(all=True)
        ids = [c["Id"] for c in listed if c.get("State") != "created"]  # never started: no log yet
        found = await asyncio.gather(*(self._inspect(cid) for cid in ids))
        return {info.id: info for info in found if info is not None}

    async def _inspect(self, cid: str) -> ContainerInfo | None:
        async with self._sem:
            self._waiting_inspect.discard(cid)  # from now on a newer event needs an inspect of its own
            try:
                d = await self._client.inspect(cid)
            except ContainerGone:
                return None
        problems: Problems = []
        try:
            info = info_from_inspect(d, self._host, self._allow, self._data_root, problems)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            self._metrics.inc(CONFIG_INVALID)
            log.warning("skipped an inspect answer of unexpected shape id=%s error=%r (counted in %s)",
                        cid[:12], e, CONFIG_INVALID)
            return None
        if problems:  # fields of the wrong type, dropped: the rest is used
            self._metrics.inc(CONFIG_INVALID)
            fields = {field for field, _ in problems}
            if not fields <= self._said_fields:
                self._said_fields |= fields
                log.warning("dropped inspect fields of the wrong type id=%s problems=%s (counted in %s; logged "
                            "once per field)", cid[:12], problems, CONFIG_INVALID)
        return info

    async def _inspect_later(self, cid: str, queue: asyncio.Queue[tuple[str, Any]]) -> None:
        """Inspect after an event; retried, since a container started from its event alone is not read until
        this answers. A broken stream ends the session anyway (and the relisting inspects everything)."""
        backoff = Backoff(0.1, 2.0, floor=0.05)
        for attempt in range(1, INSPECT_ATTEMPTS + 1):
            try:
                info = await self._inspect(cid)
                break
            except DockerError as e:
                if attempt == INSPECT_ATTEMPTS:
                    tel.docker_inspect_failed(self._metrics, cid, attempt, e)
                    return
                delay = backoff.next_delay()
                log.debug("inspect failed, will retry id=%s attempt=%d retry_in=%.2fs error=%s",
                          cid[:12], attempt, delay, e)
                await pause(delay)
        if info is not None:
            await queue.put(("inspected", info))

    def _on_event_safe(self, ev: dict[str, Any]) -> tuple[list[Change], str]:
        """No single event can stop discovery: one that cannot be read is skipped, one with a field of the
        wrong type (or a time that cannot be one) is used without it; either way counted once in
        shipper_docker_events_invalid_total."""
        problems: Problems = []
        try:
            out = self._on_event(ev, problems)
        except Exception as e:  # whatever one event breaks, the next ones are handled
            self._metrics.inc(EVENTS_INVALID)
            if not self._warned_event:
                self._warned_event = True
                shape = isinstance(e, (AttributeError, KeyError, TypeError, ValueError))
                log.warning("skipped a Docker event of unexpected shape error=%r sample=%.200r "
                            "(counted in %s; logged once)", e, ev, EVENTS_INVALID, exc_info=not shape)
            return [], ""
        if problems:
            self._metrics.inc(EVENTS_INVALID)
            fields = {field for field, _ in problems}
            if not fields <= self._said_fields:
                self._said_fields |= fields
                log.warning("used a Docker event without its values of the wrong type dropped=%s sample=%.200r "
                            "(counted in %s; logged once per field)", describe_problems(problems), ev, EVENTS_INVALID)
        return out

    def _on_event(self, ev: dict[str, Any], problems: Problems) -> tuple[list[Change], str]:
        """The changes an event implies now, and the id to inspect afterwards ("" for none). Values left
        out for their type are added to `problems`."""
        actor = ev.get("Actor") or {}
        if not isinstance(actor, dict):
            raise TypeError(f"Actor is a {type(actor).__name__}")
        cid = actor.get("ID") or ev.get("id")
        action = ev.get("Action") or ev.get("status")
        if not cid or ev.get("Type", "container") != "container":
            return [], ""
        if not isinstance(cid, str):
            raise TypeError(f"the container id is a {type(cid).__name__}")
        ns = event_ns(ev, problems)  # a time that cannot be one never moves where a resubscription resumes
        if ns is not None and ns > (self._since or 0):
            self._since = ns
        known = self._tracker.known
        if cid in self._tracker.removed:
            return [], ""
        old = known.get(cid)
        if action == "create":
            return [], cid
        if action == "start":
            if old is not None and old.running:
                return [], ""  # already reported: the listing and the subscription overlap
            base = self._created.pop(cid, None) or old
            info = info_from_event(ev, self._host, self._data_root, base, problems)
            known[cid] = info
            return [Change("start", cid, info)], cid
        if action == "die":
            if old is None or not old.running:
                return [], ""
            info = replace(old, running=False)
            known[cid] = info
            return [Change("stop", cid, info)], ""
        if action == "destroy":
            self._created.pop(cid, None)
            return self._tracker.gone(cid), ""
        if action == "rename":
            name = event_attributes(actor, problems).get("name", "").lstrip("/")
            if old is None:
                pending = self._created.get(cid)
                if pending is not None and name:
                    self._created[cid] = replace(pending, meta=replace(pending.meta, name=name))
                return [], ""
            if not name or name == old.meta.name:
                return [], ""
            info = replace(old, meta=replace(old.meta, name=name))
            known[cid] = info
            return [Change("rename", cid, info)], ""
        return [], ""

    def _on_inspected(self, info: ContainerInfo) -> list[Change]:
        """Merge an inspect answer; events stay the authority on name and state, as they may be newer."""
        cid = info.id
        if cid in self._tracker.removed:
            return []
        old = self._tracker.known.get(cid)
        if old is None:
            if not info.running:
                self._created.remember(cid, info)  # kept for its start event
            return []
        merged = replace(info, meta=replace(info.meta, name=old.meta.name), running=old.running)
        self._tracker.known[cid] = merged
        return [] if merged.same_as(old) else [Change("update", cid, merged)]


class FileDiscovery(ContainerDiscovery):
    """Scans `<data_root>/containers/*/config.v2.json`: works with no socket at all.

    A container that lives less than one scan interval is never seen; the API discovery has no such gap.
    Unchanged files are not re-read (their stat is compared), so a scan costs two stats per container.
    """

    def __init__(self, cfg: Config, metrics: Metrics) -> None:
        self._metrics = metrics
        self._root = Path(cfg.docker.data_root)
        self._interval = cfg.docker.scan_interval_secs
        self._host = cfg.host.resolved_name
        self._allow = list(cfg.select.env_allowlist)
        self._tracker = _Tracker()
        self._cache: dict[str, tuple[tuple[int, ...], ContainerInfo | None]] = {}
        self._reported: dict[str, tuple[int, ...]] = {}  # id -> stat of the bad file already reported
        self._root_missing = False
        self.scans = 0

    @property
    def known(self) -> dict[str, ContainerInfo]:
        return self._tracker.known

    async def changes(self) -> AsyncIterator[Change]:
        while True:
            try:
                result = await asyncio.to_thread(self._scan)
            except OSError as e:
                result = None
                if not self._root_missing:
                    self._root_missing = True
                    log.error("cannot scan Docker data root path=%s error=%s (retrying every %.1fs; "
                              "logged once)", self._root / "containers", e, self._interval)
            if result is not None:
                if self._root_missing:
                    self._root_missing = False
                    log.info("Docker data root readable again path=%s", self._root / "containers")
                for ch in self._diff(*result):
                    yield ch
            self.scans += 1
            await asyncio.sleep(self._interval)

    def _diff(self, infos: dict[str, ContainerInfo], unreadable: set[str]) -> Iterable[Change]:
        for cid in [c for c in self._tracker.known if c not in infos and c not in unreadable]:
            yield from self._tracker.gone(cid)
        for info in infos.values():
            yield from self._tracker.seen(info)

    def _scan(self) -> tuple[dict[str, ContainerInfo], set[str]]:
        """Runs in a thread: file reads must not stall the event loop."""
        infos: dict[str, ContainerInfo] = {}
        unreadable: set[str] = set()
        present: set[str] = set()
        with os.scandir(self._root / "containers") as it:
            for entry in it:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                cid = entry.name
                present.add(cid)
                info = self._read(cid, Path(entry.path), unreadable)
                if info is not None:
                    infos[cid] = info
        for cid in [c for c in self._cache if c not in present]:
            del self._cache[cid]
            self._reported.pop(cid, None)
        return infos, unreadable

    def _read(self, cid: str, d: Path, unreadable: set[str]) -> ContainerInfo | None:
        try:
            st = os.stat(d / "config.v2.json")
        except FileNotFoundError:
            if cid in self._tracker.known:
                unreadable.add(cid)  # being removed: the directory goes next
            return None  # or being created: the file comes next
        except OSError as e:
            unreadable.add(cid)
            self._invalid(cid, (), f"stat failed: {e}")
            return None
        try:
            hst = os.stat(d / "hostconfig.json")
            hkey: tuple[int, ...] = (hst.st_mtime_ns, hst.st_size, hst.st_ino)
        except OSError:
            hkey = ()
        key = (st.st_mtime_ns, st.st_size, st.st_ino, *hkey)
        cached = self._cache.get(cid)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            parsed = info_from_config_files(d, self._host, self._allow, str(self._root))
        except (OSError, ValueError) as e:
            unreadable.add(cid)
            self._invalid(cid, key, str(e))
            return None
        if parsed.id != cid:
            unreadable.add(cid)
            self._invalid(cid, key, f"config.v2.json names another container {parsed.id}")
            return None
        if self._reported.pop(cid, None) is not None:
            log.info("container config readable again id=%s", cid[:12])
        # Created but never started: no log yet; looked at again when its file changes.
        info = parsed if parsed.running or parsed.started_at else None
        self._cache[cid] = (key, info)
        return info

    def _invalid(self, cid: str, key: tuple[int, ...], reason: str) -> None:
        """Counted once per version of the bad file; logged once until the file reads well again."""
        if self._reported.get(cid) == key:
            return
        first = cid not in self._reported
        self._reported[cid] = key
        self._metrics.inc(CONFIG_INVALID)
        if first:
            log.warning("skipped unreadable container config id=%s reason=%s (retried every scan; counted in "
                        "%s; logged once until it reads well)", cid[:12], reason, CONFIG_INVALID)
