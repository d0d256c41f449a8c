"""Syslog sink: RFC 5424 / 3164 over UDP, TCP, TLS and unix sockets."""
