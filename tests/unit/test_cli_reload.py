"""`shipper reload` against a real `shipper run`: through the admin server (applied, refused with the daemon's
reason, a wrong token, nobody listening, a config from standard input), and by SIGHUP through the pid file
when the admin server is off (applied, a bad config not sent, no pid file, a stale one naming another program).

Docker is not needed: discovery = "files" reads a data root written by the test (as in test_cli_run.py).
"""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import pytest

from shipper.pidfile import PID_FILE, is_shipper_run
from tests.unit.daemon import LINES, ROOT, Daemon, append_lines, clean_env, free_port, messages


class AdminDaemon(Daemon):
    """`shipper run` with the [admin] table the test gives; started, it has delivered every line and written
    its pid file."""

    def __init__(self, tmp: Path, admin: str) -> None:
        super().__init__(tmp, out="out.jsonl", admin=admin)

    def start(self, *, stdin_config: bool = False, umask: int | None = None) -> Self:
        super().start(stdin_config=stdin_config, umask=umask)
        self.wait_for(lambda: len(messages(self.out)) == LINES and (self.state / PID_FILE).exists(),
                      "every line delivered and the pid file written")
        return self

    def reload(self, body: str = "", *extra: str) -> subprocess.CompletedProcess[str]:
        """Write the base config plus `body`, then `shipper reload --config` it."""
        self.config.write_text(self.base + body)
        return subprocess.run([sys.executable, "-m", "shipper", "reload", "--config", str(self.config), *extra],
                              capture_output=True, text=True, timeout=90, cwd=ROOT, env=clean_env())

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def second_sink(tmp: Path) -> tuple[Path, str]:
    path = tmp / "second.jsonl"
    return path, f'[sinks.second]\ntype = "file"\npath = "{path}"\n'


def test_through_the_admin_server_applied_then_refused_with_the_reason(tmp_path: Path,
                                                                      daemons: list[Daemon]) -> None:
    """200 -> exit 0 and the new sink delivers; a bad config -> exit 1 with the daemon's answer and the key at
    fault (read here), the daemon running on with the sinks it had; the pid file is 0600 and goes at stop."""
    port = free_port()
    d = AdminDaemon(tmp_path, f'address = "127.0.0.1:{port}"')
    daemons.append(d.start())
    pid_file = d.state / PID_FILE
    assert d.proc is not None and pid_file.read_text().strip() == str(d.proc.pid)
    assert stat.S_IMODE(pid_file.stat().st_mode) == 0o600
    second, body = second_sink(tmp_path)
    r = d.reload(body)
    assert r.returncode == 0, r.stderr
    assert "reloaded: the daemon applied the config" in r.stdout and f"127.0.0.1:{port}/-/reload" in r.stdout
    assert "sinks added=second" in d.text()
    append_lines(d.data_root, LINES, 5)
    d.wait_for(lambda: messages(second)[-1:] == [f"line {LINES + 4}"], "the added sink to deliver")
    r = d.reload(body + "[sinks.third]\ntype = \"file\"\nno_such_key = 1\n")
    assert r.returncode == 1, r.stderr
    assert "the daemon refused (HTTP 422" in r.stderr and "sinks.third.no_such_key" in r.stderr
    answer = next(line for line in r.stderr.splitlines() if "HTTP 422" in line)
    assert "sinks.third.no_such_key" in answer, "the daemon's own answer names the key"
    assert "reload refused" in d.text()
    assert d.proc is not None and d.proc.poll() is None
    assert d.stop() == 0
    assert not pid_file.exists(), "the pid file must go when the daemon stops"
    r = d.reload(body)
    assert r.returncode == 3 and "not running" in r.stderr, r.stderr


def test_a_wrong_token_is_exit_2_and_the_right_one_reloads(tmp_path: Path, daemons: list[Daemon]) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o600)
    port = free_port()
    d = AdminDaemon(tmp_path, f'address = "127.0.0.1:{port}"\ntoken_file = "{token}"')
    daemons.append(d.start())
    token.write_text("wrong\n")
    r = d.reload()
    assert r.returncode == 2 and "refused the token (401)" in r.stderr, r.stderr
    assert "reloading the config" not in d.text()
    token.write_text("s3cret\n")
    r = d.reload()
    assert r.returncode == 0, r.stderr
    assert "config reloaded" in d.text()


def test_a_config_from_standard_input_cannot_be_reloaded(tmp_path: Path, daemons: list[Daemon]) -> None:
    """The daemon answers 409 (no reload could start): exit 1 with its reason."""
    d = AdminDaemon(tmp_path, f'address = "127.0.0.1:{free_port()}"')
    daemons.append(d.start(stdin_config=True))
    r = d.reload()
    assert r.returncode == 1, r.stderr
    assert "HTTP 409" in r.stderr and "cannot be read again" in r.stderr


def test_admin_server_off_reloads_by_sighup(tmp_path: Path, daemons: list[Daemon]) -> None:
    """No admin server: the pid file names the daemon, SIGHUP applies the new sink, and the command says that
    is the way it went; a config that does not load is not sent (exit 1, the daemon untouched)."""
    d = AdminDaemon(tmp_path, 'address = ""')
    daemons.append(d.start())
    second, body = second_sink(tmp_path)
    r = d.reload(body)
    assert r.returncode == 0, r.stderr
    assert d.proc is not None and f"SIGHUP sent to the daemon, pid {d.proc.pid}" in r.stdout
    d.wait_for(lambda: "sinks added=second" in d.text(), "the SIGHUP reload")
    append_lines(d.data_root, LINES, 5)
    d.wait_for(lambda: messages(second)[-1:] == [f"line {LINES + 4}"], "the added sink to deliver")
    r = d.reload("[buffer]\nmax_events = -5\n")
    assert r.returncode == 1, r.stderr
    assert "buffer.max_events" in r.stderr and "not signalled" in r.stderr
    time.sleep(0.5)
    assert d.text().count("reloading the config") == 1, "a config that does not load must not be sent"
    assert d.proc.poll() is None


def test_not_running_without_the_admin_server(tmp_path: Path) -> None:
    """No pid file: exit 3. A stale pid file naming another program: exit 3, and that program is not
    signalled (SIGHUP would end it)."""
    d = AdminDaemon(tmp_path, 'address = ""')
    r = d.reload()
    assert r.returncode == 3 and "no pid file" in r.stderr, r.stderr
    other = subprocess.Popen(["sleep", "60"])
    try:
        d.state.mkdir(parents=True, exist_ok=True)
        (d.state / PID_FILE).write_text(f"{other.pid}\n")
        r = d.reload()
        assert r.returncode == 3 and "which is not shipper" in r.stderr, r.stderr
        time.sleep(0.2)
        assert other.poll() is None, "another program named by a stale pid file was signalled"
    finally:
        other.kill()
        other.wait()
    (d.state / PID_FILE).write_text(f"{other.pid}\n")  # gone now
    r = d.reload()
    assert r.returncode == 3 and "not running" in r.stderr, r.stderr


def test_nobody_at_the_admin_address_and_an_unreadable_config(tmp_path: Path) -> None:
    d = AdminDaemon(tmp_path, f'address = "127.0.0.1:{free_port()}"')
    r = d.reload()
    assert r.returncode == 3 and "not running" in r.stderr, r.stderr
    d.config.write_text("[admin\n")
    r = subprocess.run([sys.executable, "-m", "shipper", "reload", "--config", str(d.config)], capture_output=True,
                       text=True, timeout=60, cwd=ROOT, env=clean_env())
    assert r.returncode == 2 and "not valid TOML" in r.stderr and "was not asked" in r.stderr, r.stderr


@pytest.mark.parametrize(("cmdline", "ok"), [
    (["/usr/bin/python3", "-m", "shipper", "run", "--config", "/etc/shipper.toml"], True),
    (["/usr/local/bin/shipper", "--config", "x.toml", "run"], True),
    (["/usr/local/bin/shipper", "reload"], False),
    (["sleep", "60"], False),
    (["python3", "-m", "other", "--config", "/etc/shipper.toml", "run"], False),
    ([], False),
])
def test_only_a_shipper_run_command_line_is_taken_for_the_daemon(cmdline: list[str], ok: bool) -> None:
    assert is_shipper_run(cmdline) is ok


def test_a_reload_while_stopping_is_refused_and_the_stop_completes(tmp_path: Path, daemons: list[Daemon]) -> None:
    """During the shutdown drain (held here by a sink that cannot deliver) a reload is refused (409): a sink
    started then would outlive the runners shutdown cancels, and the daemon would never exit."""
    d = AdminDaemon(tmp_path, f'address = "127.0.0.1:{free_port()}"')
    d.base += (f'[sinks.down]\ntype = "syslog"\naddress = "tcp://127.0.0.1:{free_port()}"\nhealthcheck = false\n'
               '[buffer]\nshutdown_drain_secs = 60\n')
    d.config.write_text(d.base)
    daemons.append(d.start())
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    d.wait_for(lambda: "draining" in d.text(), "the drain to start")
    _, body = second_sink(tmp_path)
    r = d.reload(body)
    assert r.returncode == 1 and "HTTP 409" in r.stderr, r.stderr
    assert "received while stopping: ignored" in d.text()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0, d.text()
    assert not (tmp_path / "second.jsonl").exists()


def test_over_tls_the_daemons_own_certificate_is_the_only_one_trusted(tmp_path: Path,
                                                                     daemons: list[Daemon]) -> None:
    """The same client as `shipper status`: over TLS, with the config's tls_cert pinned. A config naming
    another certificate gets no answer it trusts (exit 3), and the daemon is not reloaded."""
    from tests.conftest import require
    from tests.tlsutil import have_openssl, make_certs

    require("openssl", have_openssl())
    certs, other = make_certs(tmp_path / "certs"), make_certs(tmp_path / "other")
    port = free_port()
    d = AdminDaemon(tmp_path, f'address = "127.0.0.1:{port}"\ntls_cert = "{certs.server_cert}"\n'
                         f'tls_key = "{certs.server_key}"')
    daemons.append(d.start())
    r = d.reload()
    assert r.returncode == 0 and f"https://127.0.0.1:{port}/-/reload" in r.stdout, r.stderr
    d.base = d.base.replace(str(certs.server_cert), str(other.server_cert)).replace(str(certs.server_key),
                                                                                  str(other.server_key))
    r = d.reload()
    assert r.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in r.stderr, r.stderr
    assert d.text().count("reloading the config") == 1
