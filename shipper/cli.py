"""The `shipper` command: run, check, replay, status, reload, version."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from shipper import __version__, compiled
from shipper.config import ENV_PREFIX, Config, config_path, load
from shipper.errors import ConfigError

log = logging.getLogger("shipper")


def setup_logging(level: str = "info", fmt: str = "text", tag: str = "") -> None:
    """`tag` names a worker in every line it logs (appended to the logger's name)."""
    handler = logging.StreamHandler(sys.stderr)
    if tag:
        def tagged(record: logging.LogRecord) -> bool:
            record.name = f"{record.name}[{tag}]"
            return True

        handler.addFilter(tagged)
    if fmt == "json":
        from shipper.telemetry.logs import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The Kafka client logs every failed connection attempt at ERROR, several a second while a broker is down;
    # the kafka sink says the same once per state change and counts each attempt, so the client speaks at debug.
    logging.getLogger("aiokafka").setLevel(logging.DEBUG if level.lower() == "debug" else logging.CRITICAL)


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run on uvloop when it is installed (faster I/O), else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _load_or_exit(args: argparse.Namespace | str | None) -> Config:
    """The config from --config (or $SHIPPER_CONFIG, or stdin for '-'), the environment and --set; exit 2
    naming the key when it is wrong."""
    if isinstance(args, argparse.Namespace):
        path, overrides = getattr(args, "config", None), getattr(args, "set", None) or []
    else:
        path, overrides = args, []
    try:
        return load(path, overrides=overrides)
    except ConfigError as e:
        print(f"shipper: config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _config_source(args: argparse.Namespace) -> str:
    path = config_path(args.config)
    where = "standard input" if str(path) == "-" else str(path) if path else "(built-in default)"
    n_env = sum(1 for k in os.environ if k.startswith(f"{ENV_PREFIX}_") and k != "SHIPPER_CONFIG")
    extra = [f"{n_env} {ENV_PREFIX}_* variables"] if n_env else []
    extra += [f"{len(args.set)} --set"] if getattr(args, "set", None) else []
    return where + (f" + {' + '.join(extra)}" if extra else "")


def _preflight_or_exit(cfg: Config, verb: str) -> None:
    """What would stop `run` at start: every problem said, naming its key, then exit 2."""
    from shipper.preflight import preflight

    problems = preflight(cfg)
    for e in problems:
        print(f"shipper: {verb}config error: {e}", file=sys.stderr)
    if problems:
        raise SystemExit(2)


def _reread(args: argparse.Namespace) -> Config:
    """The config again for a reload (SIGHUP), checked as `check` checks it: the first problem is raised."""
    from shipper.preflight import preflight

    cfg = load(args.config, overrides=getattr(args, "set", None) or [])
    problems = preflight(cfg)
    if problems:
        raise problems[0]
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load_or_exit(args)
    if args.worker:
        return _run_worker(args, cfg)
    setup_logging(args.log_level or cfg.telemetry.log_level, cfg.telemetry.log_format)
    _preflight_or_exit(cfg, "cannot start: ")
    from shipper.workers import orphan_spools

    count = cfg.pipeline.resolved_workers()
    if count > 1 or (cfg.buffer.type.value == "disk" and orphan_spools(cfg.state.path, 1)):
        return _run_supervisor(args, cfg, count)
    from shipper.app import App

    return _run_app(args, cfg, App(cfg))


def _run_app(args: argparse.Namespace, cfg: Config, app: Any,
             adapt: Callable[[Config], Config] = lambda c: c) -> int:
    """Run `app` (a whole pipeline) until it stops; `adapt` makes a config read again by a reload what this
    process runs on (a worker's own state folder and admin socket)."""
    try:
        if str(config_path(args.config)) != "-":  # standard input cannot be read again
            app.reload_config = lambda: adapt(_reread(args))
        for name, sc in cfg.sinks.items():
            where = (f" writing to {getattr(sc, 'path', '') or app.files_dir / 'events.jsonl'}"
                     if sc.type == "file" else "")
            log.info("sink %s type=%s%s", name, sc.type, where)
        source = cfg.docker.resolved_host() if cfg.docker.discovery.value == "api" else cfg.docker.data_root
        log.info("shipper %s starting: docker=%s discovery=%s read=%s state=%s buffer=%s hot_path=%s", __version__,
                 source, cfg.docker.discovery.value, cfg.docker.read.value, app.state_dir, cfg.buffer.type.value,
                 "compiled" if compiled() else "python")
        run_async(app.run())
    except ConfigError as e:  # found at start, after the checks above (a file removed since): no traceback
        print(f"shipper: cannot start: config error: {e}", file=sys.stderr)
        return 2
    return 0


def _run_supervisor(args: argparse.Namespace, cfg: Config, count: int) -> int:
    """`[pipeline] workers` > 1 (or a spool left by more workers to drain): this process supervises."""
    if str(config_path(args.config)) == "-":
        print("shipper: cannot start: config error: pipeline.workers: workers read the config file themselves, "
              "so it cannot come from standard input (give a file, or SHIPPER_* variables)", file=sys.stderr)
        return 2
    from shipper.workers import Supervisor

    argv = (["--config", args.config] if args.config else []) + [x for s in args.set for x in ("--set", s)]
    argv += ["run"] + (["--log-level", args.log_level] if args.log_level else [])
    log.info("shipper %s starting %d workers: state=%s buffer=%s hot_path=%s", __version__, count,
             cfg.state.path, cfg.buffer.type.value, "compiled" if compiled() else "python")
    return int(run_async(Supervisor(cfg, count, argv).run()))


def _run_worker(args: argparse.Namespace, cfg: Config) -> int:
    """One worker of a supervisor: `--worker K/N` reads its share of the containers; `--worker drain:DIR`
    drains a spool no worker owns."""
    from shipper.app import App
    from shipper.workers import Shard, die_with_parent, worker_config, worker_dir

    die_with_parent(args.parent)
    root = cfg.state.path
    if args.worker.startswith("drain:"):
        directory, shard, tag = Path(args.worker[len("drain:"):]), None, "drain"
    else:
        k, _, n = args.worker.partition("/")
        shard = Shard(int(k), int(n))
        directory, tag = worker_dir(root, shard.index, shard.count), f"worker {k}"
    setup_logging(args.log_level or cfg.telemetry.log_level, cfg.telemetry.log_format, tag)
    def adapt(c: Config) -> Config:
        return worker_config(c, directory, args.admin_socket)

    app = App(adapt(cfg), shard=shard, root_dir=root, drain_only=tag == "drain")
    return _run_app(args, cfg, app, adapt)


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 0: the config is good (and with --connect every target answered); 1: a target failed; 2: the
    config is wrong, with every problem `run` would stop at, naming its key."""
    if args.explain:
        from shipper.config import explain

        print(explain())
        return 0
    cfg = _load_or_exit(args)
    if args.print:
        from shipper.config import print_config

        print(print_config(cfg))
    _preflight_or_exit(cfg, "")
    sinks = ", ".join(f"{n} ({s.type})" for n, s in cfg.sinks.items())
    print(f"config ok: {_config_source(args)}; sinks: {sinks}", file=sys.stderr if args.print else sys.stdout)
    if not args.connect:
        return 0
    from shipper.preflight import connect

    verdicts = run_async(connect(cfg))
    for v in verdicts:
        print(v.line())
    return 0 if all(v.ok for v in verdicts) else 1


def cmd_replay(args: argparse.Namespace) -> int:
    cfg = _load_or_exit(args)
    setup_logging(args.log_level or "warning", cfg.telemetry.log_format)
    from shipper.replay import ReplayError, ReplaySummary, parse_time, replay

    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError as e:
        print(f"shipper: {e}", file=sys.stderr)
        return 2
    if args.max_attempts < 1:
        print("shipper: --max-attempts must be at least 1", file=sys.stderr)
        return 2
    summary = ReplaySummary()

    def said() -> str:
        return ("would send " + summary.dry_line()) if args.dry_run else summary.line()

    try:
        run_async(replay(cfg, args.sink, since, until, args.container, args.dry_run, args.max_attempts,
                         summary=summary))
    except ConfigError as e:
        print(f"shipper: {e}", file=sys.stderr)
        return 2
    except ReplayError as e:
        if summary.events or summary.failed_events:
            print(said(), file=sys.stderr)
        print(f"shipper: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        unknown = (f"; {summary.in_flight} events were in flight: they may or may not have arrived"
                   if summary.in_flight else "")
        print(f"{said()}\nshipper: interrupted: what is above was {'matched' if args.dry_run else 'sent'} "
              f"before it{unknown}", file=sys.stderr)
        return 130
    print(said(), file=sys.stderr)
    return 1 if summary.failed_events else 0


def cmd_status(args: argparse.Namespace) -> int:
    """Exit 0: the daemon answered and is healthy; 1: it answered unhealthy; 2: config error; 3: no answer."""
    cfg = _load_or_exit(args)
    from shipper.telemetry import top

    if args.json:
        try:
            doc = top.fetch(cfg.admin)
        except top.NotRunning as e:
            print(f"shipper: {e}", file=sys.stderr)
            return top.NOT_RUNNING
        import orjson

        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return 0 if doc.get("healthy") else top.UNHEALTHY
    if args.interval <= 0:
        print("shipper: --interval must be more than 0", file=sys.stderr)
        return 2
    try:
        return top.run(cfg.admin, args.watch, args.interval, sys.stdout, color=sys.stdout.isatty())
    except ConfigError as e:  # the token file went away since the config was loaded
        print(f"shipper: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


RELOAD_TIMEOUT_SECS = 60.0  # a reload closes changed sinks (10 s each at most) before it answers
NOT_RUNNING = 3


def _daemon_sections(args: argparse.Namespace) -> tuple[Config, ConfigError | None]:
    """The config that says where the daemon is ([admin], [state]), and the error the whole config has, if
    any: a config broken elsewhere must still reach the daemon, which judges it (its refusal says why).
    Raises ConfigError when even [admin] and [state] cannot be read."""
    import tomllib

    from shipper.config import load_dict

    overrides = getattr(args, "set", None) or []
    try:
        return load(args.config, overrides=overrides), None
    except ConfigError as e:
        error = e
    path = config_path(args.config)
    if path is None or str(path) == "-":
        raise error
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        raise error from None
    where = ("admin", "state")
    part = {k: data[k] for k in where if k in data} | {"sinks": {"none": {"type": "null"}}}
    ours = tuple(f"{ENV_PREFIX}_{w.upper()}_" for w in where)
    env = {k: v for k, v in os.environ.items() if not k.startswith(f"{ENV_PREFIX}_") or k.startswith(ours)}
    sets = [o for o in overrides if o.partition("=")[0].strip().startswith(tuple(f"{w}." for w in where))]
    return load_dict(part, env, sets), error


def cmd_reload(args: argparse.Namespace) -> int:
    """Exit 0: the daemon applied the config (or, with the admin server off, SIGHUP was sent); 1: refused;
    2: the config does not say how to reach the daemon, or the daemon refused the token; 3: not running."""
    from shipper.pidfile import NoDaemon, daemon_pid
    from shipper.telemetry.client import NoAnswer, NotRunning, TokenRefused, admin_url, call

    try:
        cfg, error = _daemon_sections(args)
    except ConfigError as e:
        print(f"shipper: not reloaded: config error: {e} (the daemon was not asked and runs on with its config)",
              file=sys.stderr)
        return 2
    if cfg.admin.address:
        url = admin_url(cfg.admin, "/-/reload")
        try:
            code, doc = call(cfg.admin, "/-/reload", method="POST", timeout=RELOAD_TIMEOUT_SECS)
        except ConfigError as e:  # the token file went away, or is empty
            print(f"shipper: not reloaded: config error: {e}", file=sys.stderr)
            return 2
        except TokenRefused as e:
            print(f"shipper: not reloaded: {e}", file=sys.stderr)
            return 2
        except NoAnswer as e:
            print(f"shipper: {e}: the reload may still be under way; the daemon's log says whether it was "
                  f"applied", file=sys.stderr)
            return NOT_RUNNING
        except NotRunning as e:
            print(f"shipper: not reloaded: {e}", file=sys.stderr)
            return NOT_RUNNING
        if code == 200 and doc.get("reloaded"):
            print(f"reloaded: the daemon applied the config (asked at {url})")
            return 0
        reason = doc.get("reason") or f"it answered HTTP {code}"
        print(f"shipper: not reloaded: the daemon refused (HTTP {code} at {url}): {reason}", file=sys.stderr)
        if error is not None:
            print(f"shipper: this config, read here: {error}", file=sys.stderr)
        return 1
    state = cfg.state.path
    try:
        pid = daemon_pid(state)
    except NoDaemon as e:
        print(f"shipper: not reloaded: the admin server is off in this config ([admin] address = \"\") and {e}",
              file=sys.stderr)
        return NOT_RUNNING
    if error is not None:
        print(f"shipper: not reloaded: config error: {error} (the daemon, pid {pid}, would refuse it: it was not "
              f"signalled and runs on with its config)", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"shipper: not reloaded: pid {pid} (from {state}) is gone", file=sys.stderr)
        return NOT_RUNNING
    except PermissionError:
        print(f"shipper: not reloaded: no permission to signal pid {pid} (run as the daemon's user)",
              file=sys.stderr)
        return 2
    print(f"reload signalled: SIGHUP sent to the daemon, pid {pid} (the admin server is off in this config, so "
          f"it cannot answer; its log says `config reloaded` or `reload refused` with the reason)")
    return 0


_TIME_OPTIONS = ("--since", "--until")


def _glue_negative_times(argv: Sequence[str]) -> list[str]:
    """`--since -5m`: argparse takes '-5m' for an option; glue it on as `--since=-5m`, which it reads as the
    value (a relative time means ago either way)."""
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            out += args[i:]
            break
        if a in _TIME_OPTIONS and i + 1 < len(args) and args[i + 1][:1] == "-" and args[i + 1][1:2].isdigit():
            out.append(f"{a}={args[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


CONFIG_HELP = ("TOML config file; '-' reads standard input (default: $SHIPPER_CONFIG, else local Docker to a "
               "local JSON-lines file)")
SET_HELP = ("set one key over the file and the environment, typed like the file: --set buffer.max_bytes=1GiB "
            "--set sinks.out.type=stdout (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shipper", description="Ships Docker container logs; loses nothing.")
    p.add_argument("--version", action="version", version=f"shipper {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    p.add_argument("--config", "-c", help=CONFIG_HELP)
    p.add_argument("--set", "-E", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    common = argparse.ArgumentParser(add_help=False)  # the same flags after the command; SUPPRESS keeps the
    common.add_argument("--config", "-c", default=argparse.SUPPRESS, help=CONFIG_HELP)  # ones given before
    common.add_argument("--set", "-E", action="append", default=argparse.SUPPRESS, metavar="KEY=VALUE",
                        help=SET_HELP)

    r = sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    r.add_argument("--worker", help=argparse.SUPPRESS)  # K/N or drain:DIR, from the supervisor
    r.add_argument("--parent", type=int, default=0, help=argparse.SUPPRESS)
    r.add_argument("--admin-socket", default="", help=argparse.SUPPRESS)
    r.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="override telemetry.log_level")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("check", parents=[common],
                       help="validate a config as `run` would start with it; exit 2 naming the bad key")
    c.add_argument("--explain", action="store_true",
                   help="every config key with its default, meaning and environment variable, as TOML")
    c.add_argument("--print", action="store_true",
                   help="print the effective config (file, environment, --set) as TOML, secrets masked")
    c.add_argument("--connect", action="store_true",
                   help="also reach Docker and start every sink once; a verdict each (exit 1 if one fails)")
    c.set_defaults(func=cmd_check)

    rp = sub.add_parser("replay", parents=[common], help="send retained spool events to a sink again")
    rp.add_argument("--sink", required=True, help="the [sinks.NAME] to send to")
    rp.add_argument("--since", help="from this time: RFC 3339 or relative, meaning ago (30s, 10m, 2h, 1d; "
                                    "-10m is the same as 10m)")
    rp.add_argument("--until", help="up to (not including) this time; must be after --since")
    rp.add_argument("--container", help="only containers whose name or id matches this glob")
    rp.add_argument("--dry-run", action="store_true", help="print what would be sent, send nothing")
    rp.add_argument("--max-attempts", type=int, default=10,
                    help="attempts to start the sink, and to send each request, before replay stops (exit 1)")
    rp.add_argument("--log-level", help="shipper's own log level (default warning)")
    rp.set_defaults(func=cmd_replay)

    st = sub.add_parser("status", parents=[common],
                        help="the running daemon's state: containers, sinks, lag, drops, dockerd (from /status)")
    st.add_argument("--watch", "-w", action="store_true", help="redraw in place until Ctrl-C, like `top`")
    st.add_argument("--interval", type=float, default=2.0, help="seconds between redraws with --watch")
    st.add_argument("--json", action="store_true", help="print the /status document as it is")
    st.set_defaults(func=cmd_status)

    rl = sub.add_parser("reload", parents=[common],
                        help="make the running daemon read its config again and apply its sinks (through its "
                             "admin server, else SIGHUP); exit 0 applied, 1 refused, 3 not running",
                        description="Asks the running daemon, at the [admin] address of the config (with its "
                                    "token and TLS), to read its config again and apply its sinks (POST "
                                    "/-/reload); with the admin server off, sends SIGHUP to the pid in "
                                    "<state dir>/shipper.pid. Give it the daemon's config. Exit 0 applied (or "
                                    "SIGHUP sent), 1 refused (the reason is printed), 2 the config cannot say "
                                    "how to reach the daemon or the token was refused, 3 not running.")
    rl.set_defaults(func=cmd_reload)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_glue_negative_times(sys.argv[1:] if argv is None else argv))
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
