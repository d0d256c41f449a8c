"""Syslog message encoding (RFC 5424 and RFC 3164) and stream framing (RFC 6587), apart from any socket.

Everything here is a pure function of an event, its container's metadata and the options, so the exact
bytes on the wire can be tested without a network. `SyslogEncoder` adds the one thing that is not pure:
it reuses the header fragment of the previous batch's container, since every event of a batch shares it.
"""

from __future__ import annotations

import enum
import hashlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shipper.event import Batch, ContainerMeta, Event
from shipper.sinks.fields import template_field
from shipper.timefmt import NS_PER_SEC, parse_ns

NILVALUE = "-"
SYSLOG_VERSION = 1
APP_NAME_MAX = 48  # RFC 5424 §6.2.5
HOSTNAME_MAX = 255  # RFC 5424 §6.2.4
PROCID_MAX = 128  # RFC 5424 §6.2.6
MSGID_MAX = 32  # RFC 5424 §6.2.7
SD_NAME_MAX = 32  # RFC 5424 §6.3: SD-ID and PARAM-NAME
TAG_MAX_3164 = 32  # RFC 3164 §4.1.3
MIN_MESSAGE_BYTES = 480  # RFC 5424 §6.1: every receiver must accept this much
BOM = b"\xef\xbb\xbf"
LF = b"\n"
LF_ESCAPE = b"#012"  # what rsyslog itself writes for an escaped LF ($EscapeControlCharactersOnReceive)
SD_HASH_CHARS = 8  # hex digits that keep a shortened PARAM-NAME distinct
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_SD_ID = re.compile(r'[!-~]+')
_SD_NAME_BAD = re.compile(r'[^!-~]|[=\]"]')
_TAG_BAD = re.compile(r"[^!-~]|[:\[\]/]")


class Format(enum.Enum):
    RFC5424 = "rfc5424"
    RFC3164 = "rfc3164"


class Framing(enum.Enum):
    """How messages are delimited on stream transports (RFC 6587 §3.4)."""

    OCTET_COUNTING = "octet-counting"  # MSG-LEN SP SYSLOG-MSG: any byte may appear in the message
    LF = "lf"  # SYSLOG-MSG LF: embedded LFs are written as #012


class Facility(enum.Enum):
    KERN = "kern"
    USER = "user"
    MAIL = "mail"
    DAEMON = "daemon"
    AUTH = "auth"
    SYSLOG = "syslog"
    LPR = "lpr"
    NEWS = "news"
    UUCP = "uucp"
    CRON = "cron"
    AUTHPRIV = "authpriv"
    FTP = "ftp"
    NTP = "ntp"
    AUDIT = "audit"
    ALERT = "alert"
    CLOCK = "clock"
    LOCAL0 = "local0"
    LOCAL1 = "local1"
    LOCAL2 = "local2"
    LOCAL3 = "local3"
    LOCAL4 = "local4"
    LOCAL5 = "local5"
    LOCAL6 = "local6"
    LOCAL7 = "local7"

    @property
    def code(self) -> int:
        return _FACILITY_CODES[self]


_FACILITY_CODES = {f: i for i, f in enumerate(Facility)}


class Severity(enum.Enum):
    EMERG = "emerg"
    ALERT = "alert"
    CRIT = "crit"
    ERR = "err"
    WARNING = "warning"
    NOTICE = "notice"
    INFO = "info"
    DEBUG = "debug"

    @property
    def code(self) -> int:
        return _SEVERITY_CODES[self]

    @classmethod
    def _missing_(cls, value: object) -> Severity | None:
        """Accept the usual spellings of log levels too ('error', 'warn', 'critical', ...)."""
        if isinstance(value, str):
            return LEVEL_NAMES.get(value.strip().lower())
        return None


_SEVERITY_CODES = {s: i for i, s in enumerate(Severity)}

# Level names as applications write them, to syslog severities.
LEVEL_NAMES: dict[str, Severity] = {
    "emerg": Severity.EMERG, "emergency": Severity.EMERG, "panic": Severity.EMERG,
    "alert": Severity.ALERT,
    "crit": Severity.CRIT, "critical": Severity.CRIT, "fatal": Severity.CRIT,
    "err": Severity.ERR, "error": Severity.ERR,
    "warn": Severity.WARNING, "warning": Severity.WARNING,
    "notice": Severity.NOTICE,
    "info": Severity.INFO, "information": Severity.INFO, "informational": Severity.INFO,
    "debug": Severity.DEBUG, "trace": Severity.DEBUG, "verbose": Severity.DEBUG,
}
# Numeric levels of pino and bunyan (Node.js), the common JSON loggers that write numbers.
NUMERIC_LEVELS: dict[int, Severity] = {10: Severity.DEBUG, 20: Severity.DEBUG, 30: Severity.INFO,
                                       40: Severity.WARNING, 50: Severity.ERR, 60: Severity.CRIT}
LEVEL_KEYS = ("level", "severity", "log.level")


def json_severity(fields: dict[str, Any] | None) -> Severity | None:
    """The severity a JSON application log names in `level`, `severity`, `log.level` or {"log": {"level"}}."""
    if not fields:
        return None
    for key in LEVEL_KEYS:
        value = fields.get(key)
        if value is not None:
            break
    else:
        nested = fields.get("log")
        value = nested.get("level") if isinstance(nested, dict) else None
        if value is None:
            return None
    if isinstance(value, str):
        return LEVEL_NAMES.get(value.strip().lower())
    if isinstance(value, int) and not isinstance(value, bool):
        return NUMERIC_LEVELS.get(value)
    return None


def priority(facility: Facility, severity: Severity) -> int:
    return facility.code * 8 + severity.code


# --- templates for APP-NAME, PROCID and MSGID ---------------------------------------------------------------

TEMPLATE_FIELDS = ("container.name", "container.id", "container.image", "compose.project", "compose.service",
                   "host.name", "stream")
_PLACEHOLDER = re.compile(r"\{([a-z._]+)(?::(\d+))?\}")


class Template:
    """Literal text with `{field}` or `{field:N}` (its first N characters); fields in TEMPLATE_FIELDS."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.parts: list[str | tuple[str, int]] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(text):
            self._literal(text[pos:m.start()])
            name, width = m.group(1), m.group(2)
            if name not in TEMPLATE_FIELDS:
                raise ValueError(f"unknown field {{{name}}} (known: {', '.join(TEMPLATE_FIELDS)})")
            self.parts.append((name, int(width) if width else 0))
            pos = m.end()
        self._literal(text[pos:])
        self.uses_stream = any(isinstance(p, tuple) and p[0] == "stream" for p in self.parts)

    def _literal(self, s: str) -> None:
        if "{" in s or "}" in s:
            raise ValueError(f"stray brace in {self.text!r}: placeholders look like {{container.name}} "
                             "or {container.id:12}")
        if s:
            self.parts.append(s)

    def render(self, meta: ContainerMeta, host: str, stream: str) -> str:
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            name, width = part
            value = template_field(meta, host, stream, name)
            out.append(value[:width] if width else value)
        return "".join(out)


# --- header fields ----------------------------------------------------------------------------------------


def header_field(value: str, limit: int) -> str:
    """A header field as RFC 5424 allows it: 1*limit PRINTUSASCII ('_' for others), NILVALUE if empty."""
    if not value:
        return NILVALUE
    if not (value.isascii() and value.isprintable()) or " " in value:
        value = "".join(c if "!" <= c <= "~" else "_" for c in value)
    return value[:limit]


def tag_3164(value: str) -> str:
    """An RFC 3164 TAG: no space, ':', '/' or brackets (receivers end the tag there), at most 32 chars."""
    if not value:
        return NILVALUE
    return _TAG_BAD.sub("_", value)[:TAG_MAX_3164]


# An RFC 3339 time whose fields are in range: year 0001-9999, a day that month has (29 February in a leap year
# only), hour 00-23, minute and second 00-59 (no leap second: RFC 5424 §6.2.3). Groups as timefmt.RFC3339's.
_UTC_FAST = re.compile(
    r"((?!0000)(?:\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)"
    r"|02-(?:0[1-9]|1\d|2[0-8]))"
    r"|(?:\d\d(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29))"
    r"[Tt ]((?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d)(?:[.,](\d+))?([Zz]|[+-]\d\d:?\d\d)?", re.ASCII)


def utc_parts(ts: str) -> tuple[str, str, str] | None:
    """Docker's RFC 3339 timestamp as UTC ('YYYY-MM-DD', 'hh:mm:ss', six fraction digits, truncated); None
    unless it is a real time in years 0001-9999 (RFC 5424's FULL-DATE has four digits; no leap second, §6.2.3).

    This runs per event: a UTC time (Docker's) that `_UTC_FAST` finds in range is only cut into its fields,
    no arithmetic; a time with an offset goes through `parse_ns` to be moved to UTC, and so does anything
    out of range, which parse_ns refuses."""
    m = _UTC_FAST.fullmatch(ts)
    if m is not None:
        date, clock, frac, zone = m.groups()
        if zone == "Z" or zone == "z":
            return date, clock, (frac or "")[:6].ljust(6, "0")
        if zone is None:
            return None  # no zone: refused, as parse_ns does
    try:
        secs, ns = divmod(parse_ns(ts), NS_PER_SEC)
    except ValueError:
        return None
    t = time.gmtime(secs)
    if not 1 <= t.tm_year <= 9999:  # moved to UTC past year 9999 (or before year 1)
        return None
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}", f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}",
            f"{ns // 1000:06d}")


def rfc5424_timestamp(ts: str) -> str:
    """`YYYY-MM-DDThh:mm:ss.ffffffZ`, microseconds truncated (never rounded); NILVALUE when unparseable."""
    parts = utc_parts(ts)
    if parts is None:
        return NILVALUE
    return f"{parts[0]}T{parts[1]}.{parts[2]}Z"


def rfc3164_timestamp(ts: str) -> str | None:
    """`Mmm dd hh:mm:ss` in UTC, day padded with a space; None when unparseable."""
    parts = utc_parts(ts)
    if parts is None:
        return None
    date, clock, _ = parts
    month = int(date[5:7])
    if not 1 <= month <= 12:
        return None
    return f"{MONTHS[month - 1]} {int(date[8:10]):2d} {clock}"


class Stamps:
    """The RFC 5424 or RFC 3164 time of each event, checked and formatted once a second.

    Docker's times of one second share their first 20 characters (`YYYY-MM-DDThh:mm:ss.`): once that part
    has been through `utc_parts`, an event of the same second whose rest is digits and `Z` only needs its
    fraction added (5424) or nothing at all (3164). Checking a whole time costs more than the rest of a
    message's header; this keeps it to one event a second."""

    __slots__ = ("_key", "_rfc3164", "_value")

    def __init__(self, rfc3164: bool) -> None:
        self._rfc3164 = rfc3164
        self._key = ""  # a time's first 20 characters, already found valid and in UTC
        self._value = ""  # its stamp: the 5424 stamp up to the fraction, or the whole 3164 stamp

    def stamp(self, ts: str) -> str | None:
        """As rfc5424_timestamp or rfc3164_timestamp, but None where those give NILVALUE or None."""
        n = len(ts)
        utc_fraction = n > 21 and ts[n - 1] == "Z"  # 'Z' after at least one character past the second
        if utc_fraction and self._key and ts.startswith(self._key):
            frac = ts[20:n - 1]
            if frac.isascii() and frac.isdigit():
                if self._rfc3164:
                    return self._value
                return self._value + (frac[:6] if len(frac) >= 6 else frac.ljust(6, "0")) + "Z"
        stamp = rfc3164_timestamp(ts) if self._rfc3164 else rfc5424_timestamp(ts)
        if stamp is None or stamp == NILVALUE:
            return None
        if utc_fraction and ts[19] in ".,":  # a UTC time with a fraction: its second is known
            self._key = ts[:20]
            self._value = stamp if self._rfc3164 else stamp[:20]
        return stamp


# --- structured data --------------------------------------------------------------------------------------


def escape_param_value(value: str) -> str:
    """RFC 5424 §6.3.3: '"', '\\' and ']' are escaped with a backslash inside a PARAM-VALUE."""
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if '"' in value:
        value = value.replace('"', '\\"')
    if "]" in value:
        value = value.replace("]", "\\]")
    return value


def sd_name(key: str) -> str:
    """A PARAM-NAME for an arbitrary key: forbidden characters become '_', and a key longer than 32 is cut
    and given a short hash of the whole key so two long keys with one prefix stay distinct."""
    name = _SD_NAME_BAD.sub("_", key) or "_"
    if len(name) > SD_NAME_MAX:
        digest = hashlib.blake2b(key.encode(), digest_size=SD_HASH_CHARS // 2).hexdigest()
        name = f"{name[:SD_NAME_MAX - SD_HASH_CHARS - 1]}~{digest}"
    return name


def check_sd_id(sd_id: str) -> None:
    """A private SD-ID, `name@enterprise-number`, whose labels twin `name.labels@number` also fits."""
    name, at, number = sd_id.partition("@")
    if not at or not name or not number.isdigit() or not _SD_ID.fullmatch(sd_id) or "@" in number:
        raise ValueError(f"must look like name@enterprise-number (a private SD-ID, RFC 5424 §7.2), "
                         f"got {sd_id!r}")
    if _SD_NAME_BAD.search(sd_id):
        raise ValueError(f"must not contain '=', ']', '\"' or spaces, got {sd_id!r}")
    if len(labels_sd_id(sd_id)) > SD_NAME_MAX:
        raise ValueError(f"too long: {labels_sd_id(sd_id)!r} (used for labels) must fit in {SD_NAME_MAX}")


def labels_sd_id(sd_id: str) -> str:
    name, _, number = sd_id.partition("@")
    return f"{name}.labels@{number}"


def sd_element(sd_id: str, params: Iterable[tuple[str, str]]) -> str:
    body = "".join(f' {name}="{escape_param_value(value)}"' for name, value in params)
    return f"[{sd_id}{body}]"


def container_sd(meta: ContainerMeta, sd_id: str, with_labels: bool) -> str:
    """Container id, name, image and compose project/service; labels in a second element when asked."""
    params = [("id", meta.id), ("name", meta.name.lstrip("/")), ("image", meta.image),
              ("compose_project", meta.compose_project or ""),
              ("compose_service", meta.compose_service or "")]
    sd = sd_element(sd_id, [(k, v) for k, v in params if v])
    if with_labels and meta.labels:
        sd += sd_element(labels_sd_id(sd_id), [(sd_name(k), v) for k, v in sorted(meta.labels.items())])
    return sd


# --- size and framing -------------------------------------------------------------------------------------


def truncate_utf8(data: bytes, limit: int) -> bytes:
    """At most `limit` bytes, cut before a character rather than through it."""
    if len(data) <= limit:
        return data
    if limit <= 0:
        return b""
    n = limit
    while n > 0 and (data[n] & 0xC0) == 0x80:  # data[n] continues a character begun before the cut
        n -= 1
    return data[:n]


def escape_lf(data: bytes) -> bytes:
    return data.replace(LF, LF_ESCAPE) if LF in data else data


def fit_message(msg: bytes, budget: int, escape: bool) -> bytes:
    """The MSG part cut to `budget` bytes at a character boundary, after LF escaping when `escape`;
    an escape sequence is kept whole or left out, never split."""
    if not escape:
        return truncate_utf8(msg, budget)
    out: list[bytes] = []
    room = budget
    for i, segment in enumerate(msg.split(LF)):
        if i:
            if room < len(LF_ESCAPE):
                break
            out.append(LF_ESCAPE)
            room -= len(LF_ESCAPE)
        if len(segment) > room:
            out.append(truncate_utf8(segment, room))
            break
        out.append(segment)
        room -= len(segment)
    return b"".join(out)


def frame_octet_counting(message: bytes) -> bytes:
    """RFC 6587 §3.4.1: MSG-LEN counts the bytes of the syslog message only."""
    return b"%d " % len(message) + message


def frame_lf(message: bytes) -> bytes:
    """RFC 6587 §3.4.2 non-transparent framing; the message must carry no LF of its own."""
    return message + LF


# --- encoding ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderOptions:
    format: Format = Format.RFC5424
    facility: Facility = Facility.LOCAL0
    severity: Severity = Severity.INFO
    stderr_severity: Severity = Severity.ERR
    app_name: str = "{container.name}"
    procid: str = NILVALUE
    msgid: str = "{stream}"
    sd_id: str = "docker@32473"
    sd_labels: bool = False
    bom: bool = False
    host_name: str = ""  # used when the container's metadata carries no host


@dataclass(slots=True)
class Encoded:
    """One batch, encoded for one transport."""

    messages: list[bytes]  # framed for stream transports, bare for datagrams; one per event, in order
    truncated: list[tuple[int, int]] = field(default_factory=list)  # (original message bytes, limit)
    bad_timestamps: int = 0


def event_severity(ev: Event, opts: EncoderOptions) -> Severity:
    """The JSON log's own level first, then the stream (stderr is an error by default), then the default."""
    if ev.fields is not None:
        sev = json_severity(ev.fields)
        if sev is not None:
            return sev
    return opts.stderr_severity if ev.stream == "stderr" else opts.severity


class SyslogEncoder:
    """Encodes batches; the header fragment of one container is built once per stream, not once per event."""

    def __init__(self, opts: EncoderOptions) -> None:
        self.opts = opts
        self.app_name = Template(opts.app_name)
        self.procid = Template(opts.procid)
        self.msgid = Template(opts.msgid)
        self._meta: ContainerMeta | None = None
        self._middles: dict[tuple[str, bool], bytes] = {}
        self._fitted: dict[tuple[str, int], bytes] = {}  # (stream, room) -> middle without SD, fields cut
        self._stamps = Stamps(opts.format is Format.RFC3164)
        version = b"" if opts.format is Format.RFC3164 else b"%d " % SYSLOG_VERSION
        self._prefixes = {sev: b"<%d>" % priority(opts.facility, sev) + version for sev in Severity}

    def _host(self, meta: ContainerMeta) -> str:
        return meta.host or self.opts.host_name

    def middle(self, meta: ContainerMeta, stream: str, escape: bool = False) -> bytes:
        """What follows the timestamp up to MSG: ' HOST APP PROCID MSGID SD ' (5424) or ' HOST TAG[PID]: '."""
        if meta is not self._meta:
            self._meta = meta
            self._middles = {}
            self._fitted = {}
        key = (stream, escape)
        cached = self._middles.get(key)
        if cached is not None:
            return cached
        if self.opts.format is Format.RFC3164:
            host = self._host(meta)
            pid = header_field(self.procid.render(meta, host, stream), PROCID_MAX)
            tag = tag_3164(self.app_name.render(meta, host, stream)) + (f"[{pid}]" if pid != NILVALUE else "")
            text = f" {header_field(host, HOSTNAME_MAX)} {tag}: "
        else:
            host_f, app_f, procid_f, msgid_f = self._fields_5424(meta, stream)
            text = (f" {host_f} {app_f} {procid_f} {msgid_f} "
                    f"{container_sd(meta, self.opts.sd_id, self.opts.sd_labels)} ")
        out = text.encode()
        if escape:
            out = escape_lf(out)
        self._middles[key] = out
        return out

    def _fields_5424(self, meta: ContainerMeta, stream: str) -> list[str]:
        """HOSTNAME, APP-NAME, PROCID and MSGID, each printable ASCII (one byte a character) in its limit."""
        host = self._host(meta)
        return [header_field(host, HOSTNAME_MAX),
                header_field(self.app_name.render(meta, host, stream), APP_NAME_MAX),
                header_field(self.procid.render(meta, host, stream), PROCID_MAX),
                header_field(self.msgid.render(meta, host, stream), MSGID_MAX)]

    def fitted_middle(self, meta: ContainerMeta, stream: str, room: int) -> bytes:
        """The RFC 5424 middle with NILVALUE for SD, in at most `room` bytes if it can be: should it pass
        them, HOSTNAME is cut first, then PROCID, MSGID and APP-NAME, each to one character at the least.

        Needed only when the header alone passes the limit: the four fields may take 463 bytes, and a
        limit of 480 (what every receiver takes) leaves them 436 beside PRI, VERSION, TIMESTAMP and a BOM."""
        if meta is not self._meta:
            self._meta = meta
            self._middles = {}
            self._fitted = {}
        key = (stream, room)
        cached = self._fitted.get(key)
        if cached is not None:
            return cached
        fields = self._fields_5424(meta, stream)
        excess = len(f" {' '.join(fields)} {NILVALUE} ") - room
        for i in (0, 2, 3, 1):  # HOSTNAME, PROCID, MSGID, APP-NAME
            if excess <= 0:
                break
            cut = min(excess, len(fields[i]) - 1)
            fields[i] = fields[i][:len(fields[i]) - cut]
            excess -= cut
        out = f" {' '.join(fields)} {NILVALUE} ".encode()  # printable ASCII: nothing to escape
        self._fitted[key] = out
        return out

    def encode_batch(self, batch: Batch, max_bytes: int, framing: Framing | None) -> Encoded:
        """Every event of `batch` as one syslog message of at most `max_bytes` (framing excluded).

        `framing` None means datagrams: messages go out bare and LFs stay as they are. Only MSG is cut;
        should the header and SD alone pass the limit, the SD gives way, and then if need be the header
        fields (`fitted_middle`); either counts as a truncation too. With max_bytes >= 480 (the least a
        sink allows), no message is longer than max_bytes.
        """
        opts = self.opts
        meta = batch.container
        rfc3164 = opts.format is Format.RFC3164
        escape = framing is Framing.LF
        bom = BOM if opts.bom and not rfc3164 else b""
        prefixes = self._prefixes
        stamps = self._stamps
        stdout_prefix, stderr_prefix = prefixes[opts.severity], prefixes[opts.stderr_severity]
        out: list[bytes] = []
        encoded = Encoded(out)
        for ev in batch.events:
            prefix = stderr_prefix if ev.stream == "stderr" else stdout_prefix
            if ev.fields is not None:  # the application's own level wins
                sev = json_severity(ev.fields)
                if sev is not None:
                    prefix = prefixes[sev]
            stamp = stamps.stamp(ev.timestamp)
            if stamp is None:
                encoded.bad_timestamps += 1
                stamp = _now_3164() if rfc3164 else NILVALUE
            stamp_bytes = stamp.encode()
            head = prefix + stamp_bytes + self.middle(meta, ev.stream, escape) + bom
            msg = ev.message.encode("utf-8", "replace")
            budget = max_bytes - len(head)
            full_head = 0  # the header as it would have been, when the SD and maybe more had to go
            if budget < 0 and not rfc3164:  # the SD goes, then as much of the header fields as it takes
                full_head = len(head)
                room = max_bytes - len(prefix) - len(stamp_bytes) - len(bom)
                head = prefix + stamp_bytes + self.fitted_middle(meta, ev.stream, room) + bom
                budget = max_bytes - len(head)
            budget = max(budget, 0)
            full = len(msg) + (len(LF_ESCAPE) - 1) * msg.count(LF) if escape else len(msg)
            if full > budget or full_head:
                encoded.truncated.append(((full_head or len(head)) + len(msg), max_bytes))
                body = fit_message(msg, budget, escape)
            else:
                body = escape_lf(msg) if escape else msg
            message = head + body
            if framing is Framing.OCTET_COUNTING:
                message = frame_octet_counting(message)
            elif escape:
                message = frame_lf(message)
            out.append(message)
        return encoded


def _now_3164() -> str:
    """RFC 3164 has no NILVALUE for the time: a relay puts its own (§4.3.2)."""
    now = datetime.now(UTC)
    return f"{MONTHS[now.month - 1]} {now.day:2d} {now:%H:%M:%S}"


def encode_event(opts: EncoderOptions, meta: ContainerMeta, ev: Event, max_bytes: int = 1 << 30,
                 framing: Framing | None = None) -> bytes:
    """One event as one (framed) syslog message: the pure form of `SyslogEncoder.encode_batch`."""
    return SyslogEncoder(opts).encode_batch(Batch(meta, [ev]), max_bytes, framing).messages[0]
