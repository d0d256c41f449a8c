"""SIGHUP: read the config again and apply what can change while running, the sinks.

The new config goes through the same load and checks as `shipper check` (file, environment, --set, then
everything `run` would stop at); a config that fails is refused whole, naming the key, and the daemon keeps
the one it runs with. Sinks are then applied by name: a sink no longer configured is stopped and its cursor
removed (it no longer holds the buffer); a new one starts on a new cursor (from the oldest event still
buffered: in memory, or in the spool and not yet delivered by some sink); a changed one is stopped, closed
and started again with its new config on the same cursor, rewound, so what it had in flight is sent again
(at least once, with the same `event.id`). Every other section is read at start only: a change there is
reported as needing a restart (the buffer's type and the state dir above all: they decide where events and
offsets live) and the running value is kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from shipper.config import Config
from shipper.errors import ConfigError
from shipper.telemetry import events as tel

if TYPE_CHECKING:
    from shipper.app import App

log = logging.getLogger("shipper")
LIVE_SECTIONS = ("sinks",)  # applied by a reload; every other section takes a restart


@dataclasses.dataclass(frozen=True)
class SinkChanges:
    added: list[str]
    removed: list[str]
    changed: list[str]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def sink_changes(old: Config, new: Config) -> SinkChanges:
    return SinkChanges(added=sorted(set(new.sinks) - set(old.sinks)),
                       removed=sorted(set(old.sinks) - set(new.sinks)),
                       changed=sorted(n for n in set(old.sinks) & set(new.sinks) if old.sinks[n] != new.sinks[n]))


def restart_sections(old: Config, new: Config) -> list[str]:
    """Sections that differ but are read at start only. host.name is resolved at start, so an unset name is
    compared as unset."""
    out = []
    for f in dataclasses.fields(Config):
        if f.name in LIVE_SECTIONS:
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if f.name == "host" and not b.name:
            a = dataclasses.replace(a, name="")
        if a != b:
            out.append(f.name)
    return out


async def reload(app: App, load: Callable[[], Config]) -> bool:
    """Apply a new config's sinks to the running app; False (the old config kept) when it is refused. Never
    raises: a reload must not stop the daemon it runs in."""
    app.reload_refusal = ""
    try:
        new = await asyncio.to_thread(load)
    except ConfigError as e:
        app.reload_refusal = str(e)
        tel.config_reload_refused(app.metrics, e)
        return False
    except Exception as e:  # a file that vanished mid-read, a bug: refused the same way, with its traceback
        log.exception("reload failed before anything was applied")
        app.reload_refusal = f"{type(e).__name__}: {e}"
        tel.config_reload_refused(app.metrics, ConfigError("", app.reload_refusal))
        return False
    old = app.config
    changes = sink_changes(old, new)
    try:
        for name in changes.removed + changes.changed:
            await app.stop_sink(name, remove_cursor=name in changes.removed)
        app.config = dataclasses.replace(old, sinks=new.sinks)
        for name in changes.changed + changes.added:
            app.start_sink(name, new.sinks[name])
        tel.config_reloaded(app.metrics, changes.added, changes.removed, changes.changed,
                            len(new.sinks) - len(changes.added) - len(changes.changed), restart_sections(old, new))
    except Exception as e:  # checked like `shipper check` before: a bug; the sinks started so far keep running
        log.exception("reload failed while applying the sinks: %s", changes)
        app.reload_refusal = f"applying the sinks failed: {type(e).__name__}: {e}"
        return False
    return True
