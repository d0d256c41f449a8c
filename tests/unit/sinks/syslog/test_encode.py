"""The syslog encoder against exact expected bytes: every header field, SD escaping, framing, limits."""

from __future__ import annotations

from datetime import datetime

import pytest

from shipper.event import COMPOSE_PROJECT, COMPOSE_SERVICE, Batch, ContainerMeta, Event
from shipper.sinks.syslog.encode import (
    EncoderOptions,
    Facility,
    Format,
    Framing,
    Severity,
    Stamps,
    SyslogEncoder,
    Template,
    check_sd_id,
    encode_event,
    escape_param_value,
    fit_message,
    json_severity,
    rfc3164_timestamp,
    rfc5424_timestamp,
    sd_name,
    truncate_utf8,
)

CID = "0123456789ab" + "c" * 52
TS = "2024-05-01T12:34:56.123456789Z"
META = ContainerMeta(id=CID, name="web-1", image="registry.local:5000/shop/web:1.2",
                     labels={COMPOSE_PROJECT: "shop", COMPOSE_SERVICE: "web"}, host="node-1")
SD = (f'[docker@32473 id="{CID}" name="web-1" image="registry.local:5000/shop/web:1.2" '
      'compose_project="shop" compose_service="web"]')
OPTS = EncoderOptions()


def enc(ev: Event, meta: ContainerMeta = META, opts: EncoderOptions = OPTS, **kw: object) -> bytes:
    return encode_event(opts, meta, ev, **kw)  # type: ignore[arg-type]


def test_rfc5424_every_field() -> None:
    got = enc(Event(TS, "hello world", "stdout"))
    assert got == f"<134>1 2024-05-01T12:34:56.123456Z node-1 web-1 - stdout {SD} hello world".encode()


def test_timestamp_is_truncated_to_microseconds_never_rounded() -> None:
    assert rfc5424_timestamp("2024-12-31T23:59:59.999999999Z") == "2024-12-31T23:59:59.999999Z"
    assert rfc5424_timestamp("2024-05-01T12:34:56Z") == "2024-05-01T12:34:56.000000Z"
    assert rfc5424_timestamp("2024-05-01T12:34:56.5Z") == "2024-05-01T12:34:56.500000Z"
    assert rfc5424_timestamp("2024-05-01T00:30:00.123+02:00") == "2024-04-30T22:30:00.123000Z"
    assert rfc5424_timestamp("not a time") == "-"


def test_bad_timestamp_is_nil_and_counted() -> None:
    out = SyslogEncoder(OPTS).encode_batch(Batch(META, [Event("yesterday", "x"), Event(TS, "y")]), 4096, None)
    assert out.bad_timestamps == 1
    assert out.messages[0].startswith(b"<134>1 - node-1 web-1 ")


@pytest.mark.parametrize("ts", [
    "2024-13-45T99:99:99Z", "2024-00-10T12:00:00Z", "2024-05-00T12:00:00Z", "2024-02-30T12:00:00Z",
    "2023-02-29T12:00:00Z", "1900-02-29T12:00:00Z", "2024-04-31T12:00:00Z", "2024-05-32T12:00:00Z",
    "2024-05-01T24:00:00Z", "2024-05-01T12:60:00Z", "2024-05-01T12:00:60Z",  # RFC 5424: no leap second
    "0000-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00", "0001-01-01T00:30:00+01:00",
    "2024-02-30T12:00:00+01:00", "2024-05-01T12:00:00", "2024-05-01T12:00:00+24:00",
])
def test_impossible_time_is_nilvalue_and_counted(ts: str) -> None:
    assert rfc5424_timestamp(ts) == "-"
    assert rfc3164_timestamp(ts) is None
    out = SyslogEncoder(OPTS).encode_batch(Batch(META, [Event(ts, "x"), Event(TS, "y")]), 4096, None)
    assert out.bad_timestamps == 1 and out.messages[0].startswith(b"<134>1 - node-1 ")


@pytest.mark.parametrize(("ts", "want"), [
    ("2024-02-29T12:00:00.5Z", "2024-02-29T12:00:00.500000Z"),  # leap years: by 4, by 400, not by 100
    ("2000-02-29T00:00:00Z", "2000-02-29T00:00:00.000000Z"),
    ("2023-02-28T23:59:59.999999999Z", "2023-02-28T23:59:59.999999Z"),
    ("2024-01-31T00:00:00Z", "2024-01-31T00:00:00.000000Z"),
    ("2024-12-31T23:59:59z", "2024-12-31T23:59:59.000000Z"),
    ("2024-06-30 08:00:00,25Z", "2024-06-30T08:00:00.250000Z"),
    ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000000Z"),
    ("9999-12-31T23:59:59.999999999Z", "9999-12-31T23:59:59.999999Z"),
    ("9999-12-31T23:59:59+01:00", "9999-12-31T22:59:59.000000Z"),
    ("2024-02-28T23:30:00-01:00", "2024-02-29T00:30:00.000000Z"),  # moved to UTC onto a 29 February
    ("2024-05-31T00:30:00.1234567+01:00", "2024-05-30T23:30:00.123456Z"),
])
def test_real_times_at_the_edges_pass(ts: str, want: str) -> None:
    assert rfc5424_timestamp(ts) == want


# Times in the order a container could write them: the stamp of a second is kept and reused, so a time that
# shares a kept second's first 20 characters but is not a time itself must still be refused.
SECOND_RUN = [
    "2024-05-01T12:34:56.123456789Z", "2024-05-01T12:34:56.5Z", "2024-05-01T12:34:56.123456Z",
    "2024-05-01T12:34:56.1234567890123Z", "2024-05-01T12:34:56.12a4Z", "2024-05-01T12:34:56.\u0661\u0662Z",
    "2024-05-01T12:34:56.Z", "2024-05-01T12:34:56.99+02:00", "2024-05-01T12:34:56.7z", "2024-05-01T12:34:56Z",
    "2024-05-01T12:34:57.000000001Z", "2024-05-01T12:34:56.25Z", "2024-05-01 12:34:56,5Z",
    "2024-05-01 12:34:56,75Z", "2024-05-01T12:34:56,5Z", "2023-02-29T12:00:00.5Z", "2023-02-29T12:00:00.6Z",
    "2024-02-29T23:59:59.999Z", "2024-02-29T23:59:59.9990Z", "yesterday", "2024-02-29T23:59:59.1Z",
]


@pytest.mark.parametrize("rfc3164", [False, True])
def test_stamps_kept_per_second_give_what_each_time_alone_gives(rfc3164: bool) -> None:
    stamps = Stamps(rfc3164)
    for ts in SECOND_RUN + SECOND_RUN[::-1]:
        alone = rfc3164_timestamp(ts) if rfc3164 else rfc5424_timestamp(ts)
        assert stamps.stamp(ts) == (None if alone == "-" else alone), ts


def test_a_batch_of_one_second_counts_its_bad_times_and_stamps_the_rest() -> None:
    batch = Batch(META, [Event(ts, "m") for ts in SECOND_RUN])
    out = SyslogEncoder(OPTS).encode_batch(batch, 4096, None)
    stamps = [m.split(b" ")[1].decode() for m in out.messages]
    assert stamps == [rfc5424_timestamp(ts) for ts in SECOND_RUN]
    assert out.bad_timestamps == sum(rfc5424_timestamp(ts) == "-" for ts in SECOND_RUN) == 6


def test_every_day_of_a_leap_and_a_common_year_as_datetime_says() -> None:
    for year in (1900, 2000, 2023, 2024):
        for month in range(1, 13):
            for day in range(1, 33):
                ts = f"{year}-{month:02d}-{day:02d}T12:00:00Z"
                try:
                    datetime(year, month, day)
                except ValueError:
                    assert rfc5424_timestamp(ts) == "-", ts
                else:
                    assert rfc5424_timestamp(ts) == f"{ts[:-1]}.000000Z", ts


def test_sd_param_values_escape_quote_backslash_bracket() -> None:
    assert escape_param_value('a"b\\c]d') == 'a\\"b\\\\c\\]d'
    meta = ContainerMeta(id="abc", name="n", image='we"ird\\im]age', host="h")
    got = enc(Event(TS, "m"), meta)
    assert got == b'<134>1 2024-05-01T12:34:56.123456Z h n - stdout [docker@32473 id="abc" name="n" ' \
                  b'image="we\\"ird\\\\im\\]age"] m'


def test_labels_go_to_a_second_sd_element_with_safe_names() -> None:
    long_key = "com.docker.compose.project.working_dir"
    meta = ContainerMeta(id="abc", name="n", host="h",
                         labels={"tier": 'front"end]', "a b=c": "v", long_key: "/srv/app"})
    got = enc(Event(TS, "m"), meta, EncoderOptions(sd_labels=True))
    short = sd_name(long_key)
    assert len(short) == 32 and short.startswith("com.docker.compose.proj~")
    assert short != sd_name(long_key + "2")
    assert got == (b'<134>1 2024-05-01T12:34:56.123456Z h n - stdout [docker@32473 id="abc" name="n"]'
                   b'[docker.labels@32473 a_b_c="v" ' + short.encode() + b'="/srv/app" '
                   b'tier="front\\"end\\]"] m')


def test_empty_fields_are_nilvalue() -> None:
    meta = ContainerMeta(id="abc", name="", host="")
    got = enc(Event(TS, "", ""), meta, EncoderOptions(host_name=""))
    assert got == b'<134>1 2024-05-01T12:34:56.123456Z - - - - [docker@32473 id="abc"] '


def test_host_falls_back_to_the_daemons_host_name() -> None:
    meta = ContainerMeta(id="abc", name="n", host="")
    assert enc(Event(TS, "m"), meta, EncoderOptions(host_name="box")).split(b" ")[2] == b"box"


def test_long_app_name_is_cut_to_48_printable_ascii() -> None:
    meta = ContainerMeta(id="abc", name="a" * 60, host="h")
    assert enc(Event(TS, "m"), meta).split(b" ")[3] == b"a" * 48
    meta = ContainerMeta(id="abc", name="caf\u00e9 app", host="h")
    assert enc(Event(TS, "m"), meta).split(b" ")[3] == b"caf__app"


def test_templates_for_app_name_procid_msgid() -> None:
    opts = EncoderOptions(app_name="{compose.project}-{compose.service}", procid="{container.id:12}",
                          msgid="{stream}@{host.name}")
    got = enc(Event(TS, "m", "stderr"), META, opts)
    assert got.split(b" ")[3:6] == [b"shop-web", b"0123456789ab", b"stderr@node-1"]
    assert Template("{container.image}").render(META, "h", "stdout") == META.image
    assert Template("x{compose.service}y").render(ContainerMeta(id="a", name="b"), "h", "s") == "xy"


@pytest.mark.parametrize("text", ["{container.nmae}", "{container.name", "a}b", "{}"])
def test_bad_templates_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        Template(text)


def test_octet_counting_counts_bytes_not_characters() -> None:
    msg = "\u00e9" * 1000  # 2 bytes each
    got = enc(Event(TS, msg), framing=Framing.OCTET_COUNTING)
    header = f"<134>1 2024-05-01T12:34:56.123456Z node-1 web-1 - stdout {SD} ".encode()
    length = len(header) + 2000
    assert got == f"{length} ".encode() + header + msg.encode()


def test_embedded_newlines_per_framing() -> None:
    ev = Event(TS, "line one\nline two\n\tat frame")
    header = f"<134>1 2024-05-01T12:34:56.123456Z node-1 web-1 - stdout {SD} ".encode()
    raw = b"line one\nline two\n\tat frame"
    assert enc(ev) == header + raw  # datagram: as is
    assert enc(ev, framing=Framing.OCTET_COUNTING) == b"%d " % len(header + raw) + header + raw
    assert enc(ev, framing=Framing.LF) == header + b"line one#012line two#012\tat frame\n"


def test_lf_framing_escapes_newlines_in_sd_too() -> None:
    meta = ContainerMeta(id="abc", name="n", host="h", labels={"note": "two\nlines"})
    got = enc(Event(TS, "m"), meta, EncoderOptions(sd_labels=True), framing=Framing.LF)
    assert got.count(b"\n") == 1 and b'note="two#012lines"' in got


@pytest.mark.parametrize(("fields", "stream", "pri"), [
    (None, "stdout", 134),  # local0.info
    (None, "stderr", 131),  # local0.err
    ({"level": "warn"}, "stdout", 132),
    ({"level": "WARNING"}, "stderr", 132),  # the application's own level beats the stream
    ({"severity": "debug"}, "stdout", 135),
    ({"log.level": "error"}, "stdout", 131),
    ({"log": {"level": "critical"}}, "stdout", 130),
    ({"level": "fatal"}, "stdout", 130),
    ({"level": "emerg"}, "stdout", 128),
    ({"level": 50}, "stdout", 131),  # pino/bunyan numbers
    ({"level": 30}, "stderr", 134),
    ({"level": "chatty"}, "stderr", 131),  # unknown: back to the stream's severity
    ({"level": True}, "stdout", 134),
    ({"msg": "no level"}, "stdout", 134),
])
def test_severity_from_json_level_then_stream(fields: dict | None, stream: str, pri: int) -> None:
    got = enc(Event(TS, "m", stream, fields))
    assert got.startswith(b"<%d>1 " % pri)


def test_facility_and_configured_severities() -> None:
    opts = EncoderOptions(facility=Facility.DAEMON, severity=Severity.NOTICE,
                          stderr_severity=Severity.WARNING)
    assert enc(Event(TS, "m"), opts=opts).startswith(b"<29>1 ")  # 3*8+5
    assert enc(Event(TS, "m", "stderr"), opts=opts).startswith(b"<28>1 ")
    assert enc(Event(TS, "m"), opts=EncoderOptions(facility=Facility.LOCAL7)).startswith(b"<190>1 ")
    assert enc(Event(TS, "m"), opts=EncoderOptions(facility=Facility.KERN)).startswith(b"<6>1 ")


def test_severity_aliases_parse_like_config_values() -> None:
    assert Severity("error") is Severity.ERR
    assert Severity("Warn") is Severity.WARNING
    assert Severity("critical") is Severity.CRIT
    with pytest.raises(ValueError):
        Severity("loud")
    assert json_severity({"level": " Info "}) is Severity.INFO


def test_truncate_utf8_never_cuts_a_character() -> None:
    data = "a\u00e9\u20ac\U0001f600".encode()  # 1 + 2 + 3 + 4 bytes
    assert [truncate_utf8(data, n) for n in range(11)] == [
        b"", b"a", b"a", data[:3], data[:3], data[:3], data[:6], data[:6], data[:6], data[:6], data]
    for n in range(11):
        truncate_utf8(data, n).decode("utf-8")


def test_fit_message_never_splits_an_lf_escape() -> None:
    msg = b"ab\ncd"
    assert [fit_message(msg, n, True) for n in range(9)] == [
        b"", b"a", b"ab", b"ab", b"ab", b"ab", b"ab#012", b"ab#012c", b"ab#012cd"]


def test_long_message_is_cut_at_a_utf8_boundary_header_and_sd_kept() -> None:
    header = f"<134>1 2024-05-01T12:34:56.123456Z node-1 web-1 - stdout {SD} ".encode()
    msg = "x" + "\u00e9" * 2000
    limit = len(header) + 100  # budget 100: 'x' + 49 'é' is 99 bytes, the 50th would end at 101
    out = SyslogEncoder(OPTS).encode_batch(Batch(META, [Event(TS, msg)]), limit, Framing.OCTET_COUNTING)
    body = header + ("x" + "\u00e9" * 49).encode()
    assert out.messages == [b"%d " % len(body) + body]
    assert out.truncated == [(len(header) + len(msg.encode()), limit)]


def test_message_at_the_limit_is_intact_and_not_counted() -> None:
    header = f"<134>1 2024-05-01T12:34:56.123456Z node-1 web-1 - stdout {SD} ".encode()
    limit = len(header) + 10
    out = SyslogEncoder(OPTS).encode_batch(Batch(META, [Event(TS, "0123456789")]), limit, None)
    assert out.messages == [header + b"0123456789"] and out.truncated == []


def test_header_and_sd_over_the_limit_drop_the_sd_not_the_message() -> None:
    meta = ContainerMeta(id="abc", name="n", host="h", labels={f"k{i}": "v" * 50 for i in range(20)})
    encoder = SyslogEncoder(EncoderOptions(sd_labels=True))
    out = encoder.encode_batch(Batch(meta, [Event(TS, "short")]), 480, None)
    assert out.messages == [b"<134>1 2024-05-01T12:34:56.123456Z h n - stdout - short"]
    assert len(out.truncated) == 1


LONG = EncoderOptions(procid="p" * 128, msgid="m" * 32, app_name="a" * 48)
LONG_META = ContainerMeta(id="c" * 64, name="web", host="h" * 255)


def test_header_fields_longer_than_the_limit_are_cut_hostname_first() -> None:
    out = SyslogEncoder(LONG).encode_batch(Batch(LONG_META, [Event(TS, "hello")]), 480, None)
    # without SD the header is 504 bytes: the 24 too many come off HOSTNAME
    want = f"<134>1 2024-05-01T12:34:56.123456Z {'h' * 231} {'a' * 48} {'p' * 128} {'m' * 32} - ".encode()
    assert len(want) == 480
    assert out.messages == [want]
    sd = f'[docker@32473 id="{"c" * 64}" name="web"]'
    whole = f"<134>1 2024-05-01T12:34:56.123456Z {'h' * 255} {'a' * 48} {'p' * 128} {'m' * 32} {sd} hello"
    assert out.truncated == [(len(whole), 480)]  # the size it would have had


def test_header_cut_order_is_hostname_procid_msgid_app_name() -> None:
    encoder = SyslogEncoder(LONG)  # limits under 480 only to see the order: a sink allows no less than 480
    fixed = len("<134>1 2024-05-01T12:34:56.123456Z ") + len(" - ") + 3  # PRI..TIMESTAMP SP, SP SD SP, 3 SPs
    for limit, want in [  # HOSTNAME APP-NAME PROCID MSGID
        (fixed + 1 + 48 + 128 + 32, ("h", "a" * 48, "p" * 128, "m" * 32)),
        (fixed + 1 + 48 + 100 + 32, ("h", "a" * 48, "p" * 100, "m" * 32)),
        (fixed + 1 + 48 + 1 + 10, ("h", "a" * 48, "p", "m" * 10)),
        (fixed + 1 + 20 + 1 + 1, ("h", "a" * 20, "p", "m")),
        (fixed + 4, ("h", "a", "p", "m")),
    ]:
        out = encoder.encode_batch(Batch(LONG_META, [Event(TS, "x")]), limit, None)
        (msg,) = out.messages
        assert len(msg) == limit and tuple(msg.decode().split(" ")[2:6]) == want, limit
        assert len(out.truncated) == 1


@pytest.mark.parametrize("framing", [None, *Framing])
@pytest.mark.parametrize("bom", [False, True])
def test_no_message_passes_the_limit_whatever_the_header(framing: Framing | None, bom: bool) -> None:
    opts = EncoderOptions(procid="p" * 128, msgid="m" * 32, app_name="a" * 48, bom=bom, sd_labels=True)
    meta = ContainerMeta(id="c" * 64, name="web", image="i" * 300, host="h" * 255, labels={"k": "v\n" * 50})
    events = [Event(TS, "hello\nworld"), Event("bad time", "short", "stderr"), Event(TS, "")]
    for limit in (480, 500, 520, 700, 2048):
        out = SyslogEncoder(opts).encode_batch(Batch(meta, events), limit, framing)
        for framed in out.messages:
            if framing is Framing.OCTET_COUNTING:
                framed = framed.split(b" ", 1)[1]
            elif framing is Framing.LF:
                assert framed.count(b"\n") == 1
                framed = framed[:-1]
            assert len(framed) <= limit
        assert out.bad_timestamps == 1


def test_a_nil_timestamp_leaves_more_of_the_hostname() -> None:
    out = SyslogEncoder(LONG).encode_batch(Batch(LONG_META, [Event(TS, "x"), Event("then", "y")]), 480, None)
    hosts = [m.split(b" ")[2] for m in out.messages]
    assert [len(h) for h in hosts] == [231, 255] and len(out.truncated) == 2
    assert out.messages[1] == f"<134>1 - {'h' * 255} {'a' * 48} {'p' * 128} {'m' * 32} - y".encode()  # SD gone


def test_bom_is_optional() -> None:
    got = enc(Event(TS, "m"), opts=EncoderOptions(bom=True))
    assert got.endswith(f"{SD} ".encode() + b"\xef\xbb\xbfm")


def test_rfc3164_exact_bytes() -> None:
    opts = EncoderOptions(format=Format.RFC3164)
    assert enc(Event(TS, "hello"), opts=opts) == b"<134>May  1 12:34:56 node-1 web-1: hello"
    assert enc(Event("2024-12-25T07:08:09.9Z", "x"), opts=opts) == b"<134>Dec 25 07:08:09 node-1 web-1: x"
    opts = EncoderOptions(format=Format.RFC3164, procid="{container.id:6}", app_name="{container.image}")
    assert enc(Event(TS, "a\nb", "stderr"), opts=opts, framing=Framing.LF) == \
        b"<131>May  1 12:34:56 node-1 registry.local_5000_shop_web_1.2[012345]: a#012b\n"


def test_rfc3164_timestamp_shapes() -> None:
    assert rfc3164_timestamp("2024-01-09T00:00:00Z") == "Jan  9 00:00:00"
    assert rfc3164_timestamp("2024-01-01T00:30:00+01:00") == "Dec 31 23:30:00"
    assert rfc3164_timestamp("garbage") is None


@pytest.mark.parametrize("sd_id", ["docker", "@32473", "docker@", "docker@12a", "do cker@1", 'do"c@1',
                                   "a-very-long-name-for-an-sd-id@32473"])
def test_bad_sd_ids_are_rejected(sd_id: str) -> None:
    with pytest.raises(ValueError):
        check_sd_id(sd_id)


def test_custom_sd_id() -> None:
    check_sd_id("acme@12345")
    got = enc(Event(TS, "m"), ContainerMeta(id="abc", name="n", host="h"), EncoderOptions(sd_id="acme@12345"))
    assert b' [acme@12345 id="abc" name="n"] m' in got


def test_batch_reuses_the_container_fragment_across_streams() -> None:
    encoder = SyslogEncoder(OPTS)
    events = [Event(TS, f"m{i}", "stderr" if i % 2 else "stdout", seq=i) for i in range(4)]
    out = encoder.encode_batch(Batch(META, events), 65536, Framing.LF).messages
    assert [m.split(b" ")[5] for m in out] == [b"stdout", b"stderr", b"stdout", b"stderr"]
    assert all(m.endswith(b"m%d\n" % i) for i, m in enumerate(out))
    other = ContainerMeta(id="zzz", name="db", host="h")
    assert b' db - stdout [docker@32473 id="zzz" name="db"] ' in encoder.encode_batch(
        Batch(other, [Event(TS, "x")]), 65536, None).messages[0]
