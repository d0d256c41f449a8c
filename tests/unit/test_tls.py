from __future__ import annotations

import dataclasses
import queue
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from shipper.sinks.syslog.transport import tls_context
from shipper.tls import TlsClientConfig, TlsFileError, client_context
from tests.conftest import require
from tests.tlsutil import Certs, have_openssl, make_certs

CA_SUBJECT = ((("commonName", "shipper test CA"),),)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    require("openssl", have_openssl())
    return make_certs(tmp_path_factory.mktemp("certs"))  # valid for localhost and 127.0.0.1


@contextmanager
def tls_server(certs: Certs, max_version: ssl.TLSVersion | None = None) -> Iterator[tuple[int, queue.Queue[object]]]:
    """A TLS server on 127.0.0.1 that asks for (but does not require) a client certificate; each accepted
    connection puts the client certificate it saw (None: none) or the handshake error on the queue."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.server_cert, certs.server_key)
    ctx.load_verify_locations(certs.ca)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    if max_version is not None:
        ctx.maximum_version = max_version
    seen: queue.Queue[object] = queue.Queue()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)  # closing a socket does not wake a thread blocked in accept(): poll `done`
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with ctx.wrap_socket(conn, server_side=True) as s:
                    peer = s.getpeercert()
                    seen.put(peer["subject"] if peer else None)
                    s.recv(1)  # until the client closes
            except (OSError, ssl.SSLError) as e:
                seen.put(e)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], seen
    finally:
        done.set()
        thread.join(5)
        listener.close()


def handshake(ctx: ssl.SSLContext, port: int, server_hostname: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_hostname) as s:
        return str(s.version())


def test_defaults_check_chain_and_name_with_tls_1_2_at_least(certs: Certs) -> None:
    ctx = client_context(str(certs.ca))
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert [c["subject"] for c in ctx.get_ca_certs()] == [CA_SUBJECT]


def test_without_a_ca_the_system_roots_are_trusted() -> None:
    ctx = client_context()
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats() == ssl.create_default_context().cert_store_stats()  # Python's own roots


def test_min_version_and_its_check(certs: Certs) -> None:
    assert client_context(str(certs.ca), min_version="1.3").minimum_version is ssl.TLSVersion.TLSv1_3
    with pytest.raises(ValueError, match=r"1\.1"):
        client_context(str(certs.ca), min_version="1.1")


def test_hostname_check_off_keeps_the_chain_check(certs: Certs) -> None:
    ctx = client_context(str(certs.ca), verify_hostname=False)
    assert ctx.verify_mode is ssl.CERT_REQUIRED and not ctx.check_hostname


def test_only_an_explicit_verify_false_accepts_any_server(certs: Certs) -> None:
    ctx = client_context(str(certs.ca), verify=False)
    assert ctx.verify_mode is ssl.CERT_NONE and not ctx.check_hostname


def test_unloadable_files_say_which(tmp_path: Path, certs: Certs) -> None:
    with pytest.raises(TlsFileError) as e:
        client_context(str(tmp_path / "missing.pem"))
    assert e.value.field == "ca" and "missing.pem" in str(e.value)
    with pytest.raises(TlsFileError) as e:
        client_context(str(certs.ca), str(certs.client_cert), str(certs.server_key))  # not its key
    assert e.value.field == "cert"
    assert isinstance(e.value, ValueError)  # what the syslog sink catches as a setup failure


def test_handshake_checks_the_server_name(certs: Certs) -> None:
    with tls_server(certs) as (port, seen):
        assert handshake(client_context(str(certs.ca)), port, "localhost") in ("TLSv1.2", "TLSv1.3")
        assert seen.get(timeout=5) is None  # no client certificate was offered
        with pytest.raises(ssl.SSLCertVerificationError, match="match"):
            handshake(client_context(str(certs.ca)), port, "not-the-server.example")
        handshake(client_context(str(certs.ca), verify_hostname=False), port, "not-the-server.example")


def test_handshake_refuses_a_server_signed_by_another_ca(tmp_path: Path, certs: Certs) -> None:
    other = make_certs(tmp_path / "other")
    with tls_server(certs) as (port, _), pytest.raises(ssl.SSLCertVerificationError):
        handshake(client_context(str(other.ca)), port, "localhost")
    with tls_server(certs) as (port, _):
        handshake(client_context(str(other.ca), verify=False), port, "localhost")  # Docker's tls_verify=false


def test_client_certificate_is_presented(certs: Certs) -> None:
    cfg = TlsClientConfig(ca=str(certs.ca), cert=str(certs.client_cert), key=str(certs.client_key))
    with tls_server(certs) as (port, seen):
        handshake(cfg.context(), port, "localhost")
        assert seen.get(timeout=5) == ((("commonName", "shipper test client"),),)


def test_min_version_is_enforced_in_the_handshake(certs: Certs) -> None:
    with tls_server(certs, max_version=ssl.TLSVersion.TLSv1_2) as (port, _):
        assert handshake(client_context(str(certs.ca)), port, "localhost") == "TLSv1.2"
        with pytest.raises(ssl.SSLError):
            handshake(client_context(str(certs.ca), min_version="1.3"), port, "localhost")


def test_config_is_frozen_and_names_the_server(certs: Certs) -> None:
    cfg = TlsClientConfig(ca=str(certs.ca), verify_hostname=False, server_name="logs.internal", min_version="1.3")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ca = ""  # type: ignore[misc]
    ctx = cfg.context()
    assert ctx.verify_mode is ssl.CERT_REQUIRED and not ctx.check_hostname
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_3
    assert cfg.hostname("10.0.0.7") == "logs.internal"
    assert TlsClientConfig().hostname("10.0.0.7") == "10.0.0.7"


def test_syslog_transport_builds_the_same_context(certs: Certs) -> None:
    ctx = tls_context(str(certs.ca), "", "", True, "1.2")
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert [c["subject"] for c in ctx.get_ca_certs()] == [CA_SUBJECT]
