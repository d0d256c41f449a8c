"""A real rsyslogd for tests: every kind of input on loopback ports and short unix paths, one JSON file out.

Each received message becomes one JSON line holding every header field rsyslog parsed, the structured
data, the message and the input it came through, so a test can compare each with what was sent. Control
characters are not escaped on receipt, so multi-line messages arrive as they were sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.tlsutil import Certs, make_certs

INPUTS = ("udp", "tcp", "ptcp", "tls", "mtls", "unix_dgram", "unix_stream")
# imrelp (package rsyslog-relp): plain, TLS with a server certificate only, TLS requiring a client certificate.
# Not among INPUTS: a harness with them needs imrelp installed.
RELP_INPUTS = ("relp", "relp_tls", "relp_mtls")
TLS_INPUTS = {"tls", "mtls", "relp_tls", "relp_mtls"}
MAX_MESSAGE_SIZE = "256k"  # rsyslog's default (8k) would cut the large messages the tests send

# Every parsed field, named as rsyslog names the property.
FIELDS = {"pri": "pri", "version": "protocol-version", "host": "hostname", "app": "app-name",
          "procid": "procid", "msgid": "msgid", "sd": "structured-data", "tag": "syslogtag", "msg": "msg",
          "input": "inputname"}


def available() -> bool:
    return shutil.which("rsyslogd") is not None


def relp_available() -> bool:
    """rsyslogd is there and can load imrelp."""
    if not available():
        return False
    with tempfile.TemporaryDirectory(prefix="rsyslog-") as d:
        conf = Path(d) / "relp.conf"
        conf.write_text(f'global(workDirectory="{d}")\nmodule(load="imrelp")\n'
                        f'action(type="omfile" file="{d}/out")\n')
        return subprocess.run(["rsyslogd", "-N1", "-f", str(conf)], capture_output=True).returncode == 0


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


DISCARD = 'if $programname == " " then '  # never true (no program name holds a space): nothing is written


class Rsyslog:
    """`start()`, `stop()`, `start()` again on the same ports and paths; `records()` reads what arrived."""

    def __init__(self, inputs: tuple[str, ...] = INPUTS, certs: Certs | None = None,
                 relp_tls_lib: str = "openssl", keep: bool = True) -> None:
        # A short private dir: unix socket paths must fit in 108 bytes, pytest's tmp_path may not.
        self.dir = Path(tempfile.mkdtemp(prefix="rsyslog-"))
        self.inputs = inputs
        self.out = self.dir / "out.jsonl"
        self.stderr_path = self.dir / "rsyslogd.stderr"
        self.pidfile = self.dir / "rsyslogd.pid"
        self.conf = self.dir / "rsyslog.conf"
        self.ports = {name: _free_port(socket.SOCK_DGRAM if name == "udp" else socket.SOCK_STREAM)
                      for name in inputs if not name.startswith("unix")}
        self.paths = {name: str(self.dir / f"{name}.sock") for name in inputs if name.startswith("unix")}
        if certs is None and (TLS_INPUTS & set(inputs)):
            certs = make_certs(self.dir / "certs")
        self.certs = certs
        # librelp's TLS library: "openssl", or "gnutls" (which asks every client for a certificate, so only
        # relp_mtls works with it)
        self.relp_tls_lib = relp_tls_lib
        # False: every message is received and parsed, then discarded (a benchmark's receiver, which must
        # not spend a core writing JSON files that nobody reads)
        self.keep = keep
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf.write_text(self._config())

    def address(self, name: str) -> str:
        if name in self.paths:
            return f"unix://{self.paths[name]}"
        scheme = {"udp": "udp", "tcp": "tcp", "ptcp": "tcp", "tls": "tls", "mtls": "tls", "relp": "relp",
                  "relp_tls": "relp+tls", "relp_mtls": "relp+tls"}[name]
        return f"{scheme}://127.0.0.1:{self.ports[name]}"

    def _config(self) -> str:
        props = "\n".join(f'  property(outname="{k}" name="{v}" format="jsonf")' for k, v in FIELDS.items())
        lines = [
            f'global(workDirectory="{self.dir}" maxMessageSize="{MAX_MESSAGE_SIZE}"',
            '       parser.escapeControlCharactersOnReceive="off"',
        ]
        if self.certs:
            c = self.certs
            lines.append(f'       defaultNetstreamDriverCAFile="{c.ca}" defaultNetstreamDriverCertFile='
                         f'"{c.server_cert}" defaultNetstreamDriverKeyFile="{c.server_key}"')
        lines[-1] += ")"
        mods = {"udp": "imudp", "tcp": "imtcp", "tls": "imtcp", "mtls": "imtcp", "ptcp": "imptcp",
                "unix_stream": "imptcp", "unix_dgram": "imuxsock", "relp": "imrelp", "relp_tls": "imrelp",
                "relp_mtls": "imrelp"}
        for mod in sorted({mods[n] for n in self.inputs}):
            extra = ' SysSock.Use="off"' if mod == "imuxsock" else ""
            if mod == "imrelp":
                extra = f' tls.tlslib="{self.relp_tls_lib}"'
            lines.append(f'module(load="{mod}"{extra})')
        # RELP acknowledges a message once the input has handed it on: with a direct queue that is after the
        # write to the file, so what was acknowledged survives a kill -9 (the main queue would hold it in
        # memory first)
        direct = ' queue.type="Direct"' if set(RELP_INPUTS) & set(self.inputs) else ""
        lines += [
            'template(name="all" type="list" option.jsonf="on") {',
            props,
            '  property(outname="ts" name="timereported" dateFormat="rfc3339" format="jsonf")',
            '}',
            f'ruleset(name="tests"{direct}) {{ {"" if self.keep else DISCARD}'
            f'action(type="omfile" file="{self.out}" template="all") }}',
        ]
        for name in self.inputs:
            common = f'ruleset="tests" name="{name}"'
            if name == "udp":
                lines.append(f'input(type="imudp" address="127.0.0.1" port="{self.ports[name]}" {common})')
            elif name in ("tcp", "ptcp"):
                mod = "imtcp" if name == "tcp" else "imptcp"
                lines.append(f'input(type="{mod}" address="127.0.0.1" port="{self.ports[name]}" {common})')
            elif name in ("tls", "mtls"):
                auth = "anon" if name == "tls" else "x509/certvalid"
                lines.append(f'input(type="imtcp" address="127.0.0.1" port="{self.ports[name]}" {common} '
                             'streamDriver.name="gtls" streamDriver.mode="1" '
                             f'streamDriver.authMode="{auth}")')
            elif name.startswith("relp"):
                tls = ""
                if name != "relp":
                    assert self.certs is not None
                    c = self.certs
                    tls = (f' tls="on" tls.caCert="{c.ca}" tls.myCert="{c.server_cert}" '
                           f'tls.myPrivKey="{c.server_key}"')
                    if name == "relp_mtls":
                        tls += ' tls.authMode="certvalid"'
                lines.append(f'input(type="imrelp" address="127.0.0.1" port="{self.ports[name]}" {common}{tls})')
            elif name == "unix_stream":
                lines.append(f'input(type="imptcp" path="{self.paths[name]}" unlink="on" {common})')
            elif name == "unix_dgram":
                # as a relay would take it: the sender's header, not the local process's credentials
                lines.append(f'input(type="imuxsock" socket="{self.paths[name]}" ruleset="tests" '
                             'useSpecialParser="off" parseHostname="on" useSysTimeStamp="off" '
                             'ignoreTimestamp="off" ratelimit.interval="0" annotate="off")')
        return "\n".join(lines) + "\n"

    # --- process ---

    def start(self, timeout: float = 15.0) -> None:
        check = subprocess.run(["rsyslogd", "-N1", "-f", str(self.conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"rsyslog config rejected:\n{check.stdout}{check.stderr}\n{self._config()}")
        self.pidfile.unlink(missing_ok=True)
        err = open(self.stderr_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(["rsyslogd", "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                                     stdout=err, stderr=err, stdin=subprocess.DEVNULL)
        err.close()
        deadline = time.monotonic() + timeout
        while not self._all_listening():
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited with {self.proc.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rsyslogd did not open its inputs in {timeout}s: {self.stderr()}")
            time.sleep(0.05)

    def _all_listening(self) -> bool:
        tcp = _proc_ports("/proc/net/tcp", listening=True)
        udp = _proc_ports("/proc/net/udp", listening=False)
        unix = _proc_unix_paths()
        for name, port in self.ports.items():
            if port not in (udp if name == "udp" else tcp):
                return False
        return all(p in unix for p in self.paths.values())

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """kill -9: no serverclose, no flush, no goodbye."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        self.stop()
        if os.environ.get("KEEP_RSYSLOG_DIR"):
            return
        shutil.rmtree(self.dir, ignore_errors=True)

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # --- output ---

    def records(self, where: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        try:
            raw = self.out.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for line in raw.split(b"\n")[:-1]:  # the last piece is empty or a line still being written
            if line:
                rec = json.loads(line)
                if where is None or where(rec):
                    out.append(rec)
        return out

    async def wait_records(self, where: Callable[[dict[str, Any]], bool], count: int,
                           timeout: float = 10.0, settle: float = 0.3) -> list[dict[str, Any]]:
        """The records matching `where` once `count` have arrived (then a short wait shows any extra)."""
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records(where)
            if len(recs) >= count:
                await asyncio.sleep(settle)
                return self.records(where)
            if time.monotonic() > deadline:
                return recs
            await asyncio.sleep(0.05)


def _proc_ports(path: str, listening: bool) -> set[int]:
    ports = set()
    for p in (path, path + "6"):
        try:
            with open(p) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if listening and cols[3] != "0A":  # TCP_LISTEN
                        continue
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
        except FileNotFoundError:
            continue
    return ports


def _proc_unix_paths() -> set[str]:
    with open("/proc/net/unix") as f:
        next(f)
        return {cols[7] for cols in (line.split() for line in f) if len(cols) >= 8}
