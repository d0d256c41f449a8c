"""`shipper check` rejects everything `shipper run` would stop at when it starts, naming the key, and `run` itself
stops there with exit 2 and the message, never a traceback or a retry loop."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.tlsutil import have_openssl, make_certs
from tests.unit.daemon import ROOT, clean_env, free_port


def shipper(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shipper", *args], capture_output=True, text=True, cwd=ROOT,
                          env=clean_env() | (env or {}), input=stdin, timeout=timeout)


@pytest.fixture
def cfg(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(config path, a state dir that works); each test writes the config's body."""
    state = tmp_path / "state"
    yield tmp_path / "shipper.toml", state


def write(path: Path, state: Path, body: str) -> Path:
    path.write_text(f'[state]\ndir = "{state}"\n{body}\n')
    return path


# (what is wrong, the config body, the key the message must name)
CASES = [
    ("Docker TLS file missing", '[docker]\nhost = "tcp://h:2376"\ntls_ca = "/nope/ca.pem"\n'
                                'tls_cert = "/nope/cert.pem"\ntls_key = "/nope/key.pem"', "docker.tls_ca"),
    ("sink TLS file missing", '[sinks.out]\ntype = "syslog"\naddress = "tls://h:6514"\ntls_ca = "/nope/ca.pem"',
     "sinks.out.tls_ca"),
    ("a port that is not a number", '[docker]\nhost = "tcp://host:notaport"', "docker.host"),
    ("a port out of range", '[sinks.out]\ntype = "syslog"\naddress = "tcp://h:99999"', "sinks.out.address"),
    ("an unknown log level", '[telemetry]\nlog_level = "verbose"', "telemetry.log_level"),
    ("offsets saved in a loop", "[state]\nflush_interval_secs = 0", "state.flush_interval_secs"),
    ("negative retries", '[sinks.out]\ntype = "null"\nmax_unexpected_errors = -1', "sinks.out.max_unexpected_errors"),
    ("negative backoff", '[sinks.out]\ntype = "file"\nretry_max_secs = -5.0', "sinks.out.retry"),
    ("a negative size", '[sinks.out]\ntype = "file"\nmax_bytes = -1', "sinks.out.max_bytes"),
    ("a negative buffer", "[buffer]\nmax_bytes = -1", "buffer.max_bytes"),
    ("a buffer too small for one batch", "[buffer]\nmax_bytes = 1000", "buffer.max_bytes"),
    ("a negative count", '[sinks.out]\ntype = "file"\nmax_files = -3', "sinks.out.max_files"),
    ("above the upper bound", '[input]\nmax_event_bytes = "1TiB"', "input.max_event_bytes"),
    ("not a number", '[sinks.out]\ntype = "null"\nlinger_secs = nan', "sinks.out.linger_secs"),
    ("a poll that spins", "[docker]\npoll_interval_secs = 0.0", "docker.poll_interval_secs"),
    ("discovery = files without Docker's files", '[docker]\ndiscovery = "files"\ndata_root = "/nonexistent/docker"',
     "docker.data_root"),
    ("a host name file that is not there", '[host]\nname_file = "/nonexistent/hostname"', "host.name_file"),
    ("an admin certificate that is not one", '[admin]\ntls_cert = "/etc/hostname"\ntls_key = "/etc/hostname"',
     "admin.tls_cert"),
]


@pytest.mark.parametrize(("what", "body", "key"), CASES, ids=[c[0] for c in CASES])
def test_check_rejects_what_run_would_trip_on(cfg: tuple[Path, Path], what: str, body: str, key: str) -> None:
    path, state = cfg
    # a [state] table in the body replaces the fixture's one (TOML allows a table once)
    text = body + "\n" if body.startswith("[state]") else None
    if text is not None:
        path.write_text(f'{body}\ndir = "{state}"\n')
    else:
        write(path, state, body)
    r = shipper("check", "--config", str(path))
    assert r.returncode == 2, (what, r.stdout, r.stderr)
    assert key in r.stderr, (what, r.stderr)
    assert "Traceback" not in r.stderr


def test_a_tls_error_names_the_file_and_what_is_wrong_with_it(cfg: tuple[Path, Path]) -> None:
    path, state = cfg
    junk = path.parent / "client.pem"
    junk.write_text("not a certificate\n")
    write(path, state, f'[sinks.out]\ntype = "syslog"\naddress = "tls://h:6514"\ntls_cert = "{junk}"\n'
                       f'tls_key = "{junk}"')
    r = shipper("check", "--config", str(path))
    assert r.returncode == 2
    assert "sinks.out.tls_cert" in r.stderr and str(junk) in r.stderr and "cannot load client certificate" in r.stderr


@pytest.mark.parametrize("where", ["parent is a file", "under /sys"])
def test_a_state_dir_that_cannot_be_created(cfg: tuple[Path, Path], where: str) -> None:
    path, _ = cfg
    blocker = path.parent / "a-file"
    blocker.write_text("")
    state = blocker / "state" if where == "parent is a file" else Path("/sys/shipper-state")
    write(path, state, "")
    r = shipper("check", "--config", str(path))
    assert r.returncode == 2 and "state.dir" in r.stderr, r.stderr
    assert not state.exists()


def test_a_state_dir_that_is_not_writable(cfg: tuple[Path, Path]) -> None:
    """As a user: a folder it may not write. As root, who may write any folder: a read-only file system (a tmpfs
    mounted read-only in a mount namespace of the check's own)."""
    path, state = cfg
    state.mkdir(mode=0o500)
    write(path, state, "")
    if os.geteuid() != 0:
        r = shipper("check", "--config", str(path))
    else:
        unshare = shutil.which("unshare")
        require("unshare (util-linux)", unshare is not None)
        assert unshare is not None
        probe = subprocess.run([unshare, "--mount", "true"], capture_output=True, text=True)
        require("a mount namespace (CAP_SYS_ADMIN)", probe.returncode == 0, probe.stderr)
        script = f'mount -t tmpfs -o ro tmpfs "{state}" && exec "$0" -m shipper check --config "{path}"'
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SHIPPER_", "DOCKER_"))}
        r = subprocess.run([unshare, "--mount", "sh", "-c", script, sys.executable], capture_output=True, text=True,
                           cwd=ROOT, env=base, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "state.dir" in r.stderr and "not writable" in r.stderr, r.stderr


def test_check_names_the_variable_of_a_bad_env_value(cfg: tuple[Path, Path]) -> None:
    path, state = cfg
    write(path, state, "")
    r = shipper("check", "--config", str(path), env={"SHIPPER_STATE_FLUSH_INTERVAL_SECS": "0"})
    assert r.returncode == 2 and "state.flush_interval_secs" in r.stderr
    r = shipper("check", "--config", str(path), env={"SHIPPER_BUFFER_MAX_BYTES": "lots"})
    assert r.returncode == 2 and "SHIPPER_BUFFER_MAX_BYTES" in r.stderr and "buffer.max_bytes" in r.stderr


def test_check_reads_stdin_and_set(cfg: tuple[Path, Path]) -> None:
    _, state = cfg
    r = shipper("check", "--config", "-", "--set", "buffer.max_events=5", stdin=f'[state]\ndir = "{state}"\n')
    assert r.returncode == 0, r.stderr
    assert "standard input + 1 --set" in r.stdout
    r = shipper("check", "--config", "-", "-E", "buffer.max_events=0", stdin=f'[state]\ndir = "{state}"\n')
    assert r.returncode == 2 and "buffer.max_events" in r.stderr


def test_run_stops_with_exit_2_and_the_message(cfg: tuple[Path, Path]) -> None:
    """What check rejects, run rejects the same way at start: one message naming the key, exit 2, no traceback
    and no retry loop (the unit's RestartPreventExitStatus=2 relies on it)."""
    path, state = cfg
    write(path, state, '[sinks.out]\ntype = "syslog"\naddress = "tls://h:6514"\ntls_ca = "/nope/ca.pem"')
    r = shipper("run", "--config", str(path), timeout=30)
    assert r.returncode == 2
    assert "cannot start" in r.stderr and "sinks.out.tls_ca" in r.stderr
    assert "Traceback" not in r.stderr
    r = shipper("run", "--config", str(path), "--set", "docker.host=tcp://h:x", timeout=30)
    assert r.returncode == 2 and "docker.host" in r.stderr and "Traceback" not in r.stderr


# --- check --connect ---------------------------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[int]:
    """A real TCP socket that accepts connections (a syslog receiver needs nothing more to be reachable)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


def test_check_connect_reports_each_target(cfg: tuple[Path, Path], listener: int) -> None:
    path, state = cfg
    data_root = path.parent / "docker"
    (data_root / "containers").mkdir(parents=True)
    dead = free_port()
    write(path, state, f'[docker]\ndiscovery = "files"\ndata_root = "{data_root}"\n'
                       f'[sinks.up]\ntype = "syslog"\naddress = "tcp://127.0.0.1:{listener}"\n'
                       f'[sinks.down]\ntype = "syslog"\naddress = "tcp://127.0.0.1:{dead}"\nconnect_timeout_secs = 2.0')
    r = shipper("check", "--connect", "--config", str(path))
    assert r.returncode == 1, r.stdout + r.stderr
    lines = {line.split(":")[0]: line for line in r.stdout.splitlines() if line.startswith(("sink", "docker"))}
    assert ": ok:" in lines["sink up (syslog)"]
    assert ": FAILED:" in lines["sink down (syslog)"] and str(dead) in lines["sink down (syslog)"]
    assert ": ok:" in lines[f"docker (files {data_root}/containers)"]
    write(path, state, f'[docker]\ndiscovery = "files"\ndata_root = "{data_root}"\n'
                       f'[sinks.up]\ntype = "syslog"\naddress = "tcp://127.0.0.1:{listener}"')
    r = shipper("check", "--connect", "--config", str(path))
    assert r.returncode == 0, r.stdout + r.stderr


def test_check_connect_to_docker_says_whether_it_answered(cfg: tuple[Path, Path], tmp_path: Path) -> None:
    path, state = cfg
    write(path, state, f'[docker]\nhost = "unix://{tmp_path}/no-docker.sock"\n[sinks.out]\ntype = "null"')
    r = shipper("check", "--connect", "--config", str(path))
    assert r.returncode == 1
    assert f"docker (unix://{tmp_path}/no-docker.sock): FAILED" in r.stdout
    assert "sink out (null): ok" in r.stdout


@pytest.fixture
def mtls_server(tmp_path: Path) -> Iterator[tuple[int, Any]]:
    """A TLS server (Python's ssl, OpenSSL underneath) that requires a client certificate signed by its CA;
    (port, the certificates)."""
    require("openssl", have_openssl())
    certs = make_certs(tmp_path / "certs")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.server_cert, certs.server_key)
    ctx.load_verify_locations(certs.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            try:
                conn.settimeout(3)
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1], certs
    stop.set()
    t.join(5)
    srv.close()


def test_check_connect_says_a_client_certificate_was_refused(cfg: tuple[Path, Path], mtls_server: tuple[int, Any],
                                                             tmp_path: Path) -> None:
    """A TLS 1.3 receiver refuses the certificate after the handshake: the verdict says so, naming the file."""
    path, state = cfg
    port, certs = mtls_server
    data_root = tmp_path / "docker"
    (data_root / "containers").mkdir(parents=True)
    base = (f'[docker]\ndiscovery = "files"\ndata_root = "{data_root}"\n[sinks.central]\ntype = "syslog"\n'
            f'address = "tls://127.0.0.1:{port}"\ntls_ca = "{certs.ca}"\n')
    write(path, state, base)
    r = shipper("check", "--connect", "--config", str(path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "sink central (syslog): FAILED" in r.stdout and "client certificate" in r.stdout
    other = make_certs(tmp_path / "other")  # a client certificate from a CA the receiver does not trust
    write(path, state, base + f'tls_cert = "{other.client_cert}"\ntls_key = "{other.client_key}"\n')
    r = shipper("check", "--connect", "--config", str(path))
    assert r.returncode == 1 and f"tls_cert={other.client_cert}" in r.stdout, r.stdout + r.stderr
    write(path, state, base + f'tls_cert = "{certs.client_cert}"\ntls_key = "{certs.client_key}"\n')
    r = shipper("check", "--connect", "--config", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sink central (syslog): ok" in r.stdout
