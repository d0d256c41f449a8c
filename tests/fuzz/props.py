"""The properties every fuzz target checks, as plain functions of concrete inputs.

The hypothesis tests (tests/fuzz/test_*.py) and the long run (tests/fuzz/run_long.py, atheris or hypothesis)
build inputs their own way and call the same `check_*` function, which raises (AssertionError, or whatever
escaped the code under test) when a property fails. Each returns the set of known bugs (KNOWN_BUGS) the
input ran into: those inputs are tolerated here, so the fuzzers keep looking past them, and each bug has a
strict xfail reproduction in the test file of its target that turns red once it is fixed (then remove
its tolerance here too).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import re
import shutil
import struct
import tempfile
import traceback
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from shipper.buffer import segment as fmt
from shipper.buffer.base import Lease
from shipper.buffer.record import decode_record, encode_record
from shipper.buffer.spool import DiskSpool
from shipper.config import BufferConfig, Config, FsyncPolicy, WhenFull, load_dict
from shipper.docker.client import DockerClient, Endpoint, EventStream
from shipper.docker.discovery import CONFIG_INVALID, EVENTS_INVALID, ApiDiscovery
from shipper.docker.metadata import ContainerInfo, info_from_config_files
from shipper.errors import ConfigError, DockerError, SpoolCorrupt, SpoolError
from shipper.event import Batch, Checkpoint, ContainerMeta, Event, Flag
from shipper.schema import build
from shipper.sinks.syslog.encode import (
    APP_NAME_MAX,
    BOM,
    HOSTNAME_MAX,
    MSGID_MAX,
    NILVALUE,
    PROCID_MAX,
    TAG_MAX_3164,
    EncoderOptions,
    Format,
    Framing,
    SyslogEncoder,
)
from shipper.sources.api import MAX_FRAME, SYSTEMERR, ApiSource, BrokenStream
from shipper.sources.base import SourceContext
from shipper.sources.jsonfile.parse import MAX_ENTRY_BYTES, _Parser
from shipper.telemetry.metrics import Metrics
from shipper.transforms.assemble import LineAssembler, utf8_len

# --- the bugs found, tolerated by the properties until fixed ----------------------------------------------

KNOWN_BUGS: dict[str, str] = {
}


NOT_BUGS = {"spool-open-refused"}  # outcomes a property notes that are documented behaviour


def only_open_bugs(hits: set[str]) -> None:
    """Fail when an input hit a bug that is no longer listed as open (fixed bugs must stay fixed)."""
    fixed = hits - set(KNOWN_BUGS) - NOT_BUGS
    assert not fixed, f"inputs hit bugs that were fixed: {sorted(fixed)}"


def _frames(exc: BaseException) -> list[str]:
    return [f.name for f in traceback.extract_tb(exc.__traceback__)]


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never waits on anything real (fakes only) without an event loop."""
    try:
        coro.send(None)
    except StopIteration as e:
        return e.value
    coro.close()
    raise AssertionError("coroutine waited: the fake is not synchronous")


def drain_sync(agen: AsyncIterator[Any]) -> list[Any]:
    out = []
    while True:
        try:
            out.append(run_sync(agen.__anext__()))
        except StopAsyncIteration:
            return out


_CONFIGS: dict[str, Config] = {}


def make_config(**sections: dict[str, Any]) -> Config:
    """Built once per distinct tree (a Config is frozen; building one costs ~1 ms of type hints)."""
    key = repr(sorted(sections.items()))
    cfg = _CONFIGS.get(key)
    if cfg is None:
        cfg = _CONFIGS[key] = build(Config, dict(sections))
    return cfg


# --- json-file lines and the assembler ------------------------------------------------------------------

JSONFILE_CONFIGS = (
    {},  # defaults: multiline auto, JSON parsed into fields
    {"multiline": {"mode": "off"}, "json": {"mode": "text"}},
    {"multiline": {"mode": "pattern", "start_pattern": r"^\S"}, "input": {"max_event_bytes": 1024}},
    {"multiline": {"max_lines": 3}, "input": {"max_event_bytes": 1024}, "json": {"message_key": "msg"}},
)
LABEL = "fuzz"


class FuzzParser(_Parser):
    """`_Parser` without a file: the state JsonFileSource keeps, and a spy on what reaches the assembler."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.ctx = SourceContext(config, metrics, _never_emit)
        self._label = LABEL
        self._asm = LineAssembler(LABEL, config, metrics)
        self._vbase = 0
        self._consumed = 0
        self._tail = b""
        self._skip = 0
        self.looks = 0
        self.adds: list[tuple[Any, Any, Any, Any]] = []
        real = self._asm.add

        def spy(ts: Any, stream: Any, text: Any, pos: Any) -> None:
            real(ts, stream, text, pos)
            self.adds.append((ts, stream, text, pos))  # taken: add returned

        self._asm.add = spy  # type: ignore[method-assign]

    def _look(self) -> None:
        self.looks += 1


async def _never_emit(batch: Batch) -> None:
    raise AssertionError("the parser does not emit")


def invalid_counts(m: Metrics) -> Counter[str]:
    snap = m.snapshot().get("shipper_lines_invalid_total", {})
    out: Counter[str] = Counter()
    for labels, v in snap.items():
        out[dict(labels)["reason"]] += int(v)
    return out


def _json_line_reason(line: bytes) -> tuple[str | None, Any]:
    """The documented reasons a json-file line is refused (parse.py), from its bytes."""
    if not line.strip():
        return "empty_line", None
    try:
        d = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return "invalid_utf8", None
        return ("nul_bytes" if b"\x00" in line else "invalid_json"), None
    if not isinstance(d, dict):
        return "not_an_object", None
    if any(k not in d for k in ("log", "stream", "time")):
        return "missing_field", None
    if any(not isinstance(d[k], str) for k in ("log", "stream", "time")):
        return "wrong_type", d
    return None, d


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def check_jsonfile(data: bytes, cuts: Sequence[int], variant: int = 0) -> set[str]:
    """Chunks of a json-file log through `_Parser._parse`: every complete line is handed to the assembler
    (at its byte offset) or counted in shipper_lines_invalid_total with its reason; no exception escapes;
    the bytes consumed, kept as tail and skipped add up to the bytes fed."""
    m = Metrics()
    cfg = make_config(**JSONFILE_CONFIGS[variant % len(JSONFILE_CONFIGS)])
    p = FuzzParser(cfg, m)
    for chunk in split_at(data, cuts):
        p._parse(chunk)
    assert p._consumed + len(p._tail) + p._skip == len(data), "bytes lost in the parser's accounting"
    lines = data.split(b"\n")
    tail = lines.pop()
    assert p._consumed == len(data) - len(tail)
    hits: set[str] = set()
    expected_adds = []
    expected_invalid: Counter[str] = Counter()
    tolerant: set[int] = set()
    pos = 0
    for line in lines:
        if len(line) > MAX_ENTRY_BYTES:
            expected_invalid["line_too_long"] += 1
        else:
            body = line.lstrip(b"\x00")
            if len(body) != len(line):
                expected_invalid["nul_bytes"] += 1
            if body or not line:
                reason, d = _json_line_reason(body)
                if reason is None:
                    expected_adds.append((d["time"], d["stream"], d["log"], pos))
                elif reason == "wrong_type" and len(body) == len(line):
                    tolerant.add(pos)  # KNOWN BUG jsonfile-wrong-types: counted or passed on, by luck
                else:
                    expected_invalid[reason] += 1
        pos += len(line) + 1
    got = invalid_counts(m)
    adds = [a for a in p.adds if a[3] not in tolerant]
    assert adds == expected_adds, "entries handed to the assembler differ from the lines that parse"
    extra = got["wrong_type"] - expected_invalid["wrong_type"]
    passed_on = len(p.adds) - len(adds)
    assert {r: n for r, n in got.items() if r != "wrong_type"} == \
        {r: n for r, n in expected_invalid.items() if r != "wrong_type" and n}, "invalid lines miscounted"
    assert extra + passed_on == len(tolerant), "a line of the wrong type was neither counted nor passed on"
    if passed_on:
        hits.add("jsonfile-wrong-types")
    p._asm.flush()
    events = p._asm.take()
    if not passed_on:
        for ev in events:
            assert type(ev.timestamp) is str and type(ev.message) is str and type(ev.stream) is str
    return hits


def expected_lines(entries: Sequence[tuple[str, str, str]]) -> dict[str, list[str]]:
    """What the application wrote, per stream, from Docker's entries (module doc of assemble.py): partial
    entries joined, the line end ("\\n", "\\r\\n") taken off, a dangling partial kept as it is."""
    parts: dict[str, list[str]] = {}
    out: dict[str, list[str]] = {}
    for _, stream, text in entries:
        if not text:
            continue
        if text[-1] != "\n":
            parts.setdefault(stream, []).append(text)
            continue
        line = "".join(parts.pop(stream, [])) + text[:-1]
        if line.endswith("\r"):
            line = line[:-1]
        out.setdefault(stream, []).append(line)
    for stream, open_parts in parts.items():
        out.setdefault(stream, []).append("".join(open_parts))
    return out


STAMP = "2024-05-01T12:00:00.{:09d}Z"


def check_assemble(ops: Sequence[tuple[int, int, str]], variant: int = 0) -> set[str]:
    """Entries through LineAssembler, with take() and flush_expired() in between: no exception; per
    stream the events hold exactly the lines written (partials joined, stack traces merged with "\\n") in
    order, unless cut at max_event_bytes (flagged and counted); event ids stay unique.

    `ops`: (kind, n, text): kind 0 adds an entry at time n // 4 (nondecreasing) on stream n % 4 (stdout,
    stderr, stdout, 'other'); 1 takes the events; 2 flushes groups idle for longer than the timeout."""
    m = Metrics()
    cfg = make_config(**JSONFILE_CONFIGS[variant % len(JSONFILE_CONFIGS)])
    asm = LineAssembler(LABEL, cfg, m)
    events: list[Event] = []
    entries = []
    t = 0
    offset = 0
    for kind, n, text in ops:
        if kind % 3 == 0:
            t += n // 4 % 3
            stream = ("stdout", "stderr", "stdout", "other")[n % 4]
            ts = STAMP.format(t)
            asm.add(ts, stream, text, offset)
            entries.append((ts, stream, text))
            offset += len(text) + 1
        elif kind % 3 == 1:
            events += asm.take()
        else:
            asm.flush_expired(1e12)
    asm.flush()
    events += asm.take()
    assert not asm.has_open()
    max_bytes = cfg.input.max_event_bytes
    truncated = m.get("shipper_events_truncated_total")
    flagged = 0
    ids = set()
    for ev in events:
        assert type(ev.message) is str and type(ev.timestamp) is str and ev.stream in ("stdout", "stderr", "other")
        assert utf8_len(ev.message) <= max_bytes, "event longer than max_event_bytes"
        if ev.flags & Flag.TRUNCATED:
            flagged += 1
        key = (ev.stream, ev.timestamp, ev.seq)
        assert key not in ids, f"two events share an id: {key}"
        ids.add(key)
    assert flagged <= truncated, "a truncated event was not counted"
    if truncated or cfg.json.message_key:
        return set()
    want = expected_lines(entries)
    for stream in ("stdout", "stderr", "other"):
        got = [ev.message for ev in events if ev.stream == stream]
        exp = want.get(stream, [])
        assert "\n".join(got) == "\n".join(exp), f"{stream}: events do not hold the lines written"
        assert len(got) <= len(exp)
    return set()


# --- config --------------------------------------------------------------------------------------------


def check_config(tree: dict[str, Any], env: dict[str, str] | None = None) -> set[str]:
    """load_dict on any TOML-like tree: a Config, or a ConfigError whose key names where the tree is wrong;
    nothing else escapes."""
    try:
        cfg = load_dict(tree, env=env or {})
    except ConfigError as e:
        if _has_empty_key(tree):
            return set()  # a key named "" has no dotted path of its own ("" then "x" reads as "x")
        assert e.key, f"ConfigError names no key: {e}"
        top = [k for k in tree if e.key == k or e.key.startswith((f"{k}.", f"{k}["))]
        assert top, f"ConfigError key {e.key!r} is not in the tree (keys {sorted(tree)[:10]})"
        return set()
    except (OverflowError, RecursionError) as e:
        names = _frames(e)
        if "validate" in names and "compile" in names:
            return {"config-regex-crash"}
        assert isinstance(e, OverflowError) and ("_convert" in names or "parse_size" in names), \
            f"{type(e).__name__} from an unexpected place"
        return {"config-number-overflow"}
    assert isinstance(cfg, Config)
    assert cfg.sinks, "a config without a sink"
    return set()


def _has_empty_key(value: Any) -> bool:
    if isinstance(value, dict):
        return "" in value or any(_has_empty_key(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_empty_key(v) for v in value)
    return False


# --- spool ---------------------------------------------------------------------------------------------

SEGMENT_BYTES = 700


def spool_config(compression: bool = False) -> BufferConfig:
    return BufferConfig(fsync=FsyncPolicy.NEVER, segment_bytes=SEGMENT_BYTES, max_bytes=1 << 30,
                        when_full=WhenFull.BLOCK, compression=compression)


def template_batches() -> list[Batch]:
    metas = [ContainerMeta("a" * 64, "web", "nginx", {"l": "v"}, "h"), ContainerMeta("b" * 64, "db")]
    out = []
    for k in range(14):
        meta = metas[k % 2]
        evs = [Event(f"2024-05-01T10:00:{k:02d}.{i + 1}Z", f"b{k}-e{i}-" + "x" * (20 + 7 * k), "stdout",
                     {"k": k} if i == 1 else None, i % 3, i) for i in range(1 + k % 3)]
        out.append(Batch(meta, evs, Checkpoint(meta.id, 1000 + k, "1:2:abcd")))
    return out


@dataclass
class SpoolTemplate:
    directory: Path
    records: dict[int, bytes]  # seq -> encode_record(batch)
    compression: bool
    files: list[str] = field(default_factory=list)  # segment file names, oldest first, then the ledger


_TEMPLATES: dict[bool, SpoolTemplate] = {}


def spool_template(compression: bool) -> SpoolTemplate:
    """A spool written by DiskSpool (several segments and a ledger), made once per process."""
    tpl = _TEMPLATES.get(compression)
    if tpl is not None:
        return tpl
    directory = Path(tempfile.mkdtemp(prefix="shipper-fuzz-spool-"))

    async def write() -> dict[int, bytes]:
        sp = DiskSpool(directory, spool_config(compression), Metrics(), lambda cp: None)
        await sp.open()
        sp.cursor("s")
        records = {}
        for b in template_batches():
            seq = sp._next_seq
            await sp.push(b)
            records[seq] = encode_record(b)
        await sp.close()
        return records

    records = asyncio.run(write())
    files = [p.name for _, p in fmt.list_segments(directory)] + ["ledger.json"]
    assert len(files) >= 4, "the template spool should have several segments"
    tpl = _TEMPLATES[compression] = SpoolTemplate(directory, records, compression, files)
    return tpl


# one mutation: (op, file index, a, b); op: 0 flip byte a by b, 1 truncate at a, 2 delete [a, a+b),
# 3 insert b bytes of garbage at a, 4 append a copy of [a, a+b), 5 remove the file
SpoolOp = tuple[int, int, int, int]


def _mutate(path: Path, op: SpoolOp) -> None:
    kind, _, a, b = op
    if kind % 6 == 5:
        path.unlink(missing_ok=True)
        return
    if not path.exists():
        return
    data = bytearray(path.read_bytes())
    n = len(data)
    kind %= 6
    if kind == 0 and n:
        data[a % n] ^= (b % 255) + 1
    elif kind == 1:
        del data[a % (n + 1):]
    elif kind == 2:
        start = a % (n + 1)
        del data[start:start + b % 64 + 1]
    elif kind == 3:
        start = a % (n + 1)
        data[start:start] = bytes((b * 31 + i * 7) & 0xFF for i in range(b % 40 + 1))
    elif kind == 4 and n:
        start = a % n
        data += data[start:start + b % 200 + 1]
    path.write_bytes(bytes(data))


@dataclass
class _Untouched:
    """Which records of the template no mutation came near (so they must all be delivered)."""

    spans: dict[str, list[tuple[int, int, int]]]  # file -> (start, end, seq) of each record
    sizes: dict[str, int]  # file -> its size as the mutations so far left it
    touched: set[int] = field(default_factory=set)
    shaken: set[str] = field(default_factory=set)  # files whose bytes moved (insert, delete, removed)

    def note(self, name: str, op: SpoolOp) -> None:
        kind, _, a, _ = op
        kind %= 6
        spans = self.spans.get(name, [])
        n = self.sizes[name]
        if kind == 0 and n:
            pos = a % n
            self.touched |= {s for lo, hi, s in spans if lo <= pos < hi}
        elif kind == 1:
            cut = a % (n + 1)
            self.touched |= {s for lo, hi, s in spans if hi > cut}
            self.sizes[name] = min(n, cut)
        elif kind == 4 and n:
            start = a % n
            self.sizes[name] = n + min(op[3] % 200 + 1, n - start)  # a copy appended: nothing moves
        else:
            self.shaken.add(name)


def _template_spans(tpl: SpoolTemplate) -> dict[str, list[tuple[int, int, int]]]:
    out = {}
    for name in tpl.files[:-1]:
        buf = (tpl.directory / "segments" / name).read_bytes()
        found = fmt.scan(buf, int(name.split(".")[0]))
        out[name] = [(off, off + h.size, h.seq) for h, off in zip(found.headers, found.offsets, strict=True)]
    return out


def _segment_gaps(directory: Path, first_written: int) -> int:
    """Records missing before the first segment or between two, as the files now stand (KNOWN BUG
    spool-segment-gap-uncounted)."""
    segs = fmt.list_segments(directory)
    missing = max(segs[0][0] - first_written, 0) if segs else 0
    for (first, path), (nxt, _) in itertools.pairwise(segs):
        found = fmt.scan(path.read_bytes(), first)
        if found.damage and found.damage[-1].reason == "torn_tail":
            continue  # counted as corrupt by recovery
        last = max((h.seq for h in found.headers if h.seq < nxt), default=first - 1)
        missing += max(nxt - last - 1, 0)
    return missing


def check_spool_open(ops: Sequence[SpoolOp], compression: bool = False) -> set[str]:
    """A spool written by DiskSpool, then damaged (bytes flipped, cut, deleted, inserted, copied; files
    removed; the ledger too): open() recovers (only SpoolError may escape), every record it then hands out
    is one that was written, unchanged and in order, every record no damage came near is handed out, and
    the records lost are no more than shipper_spool_corrupt_records_total counts."""
    tpl = spool_template(compression)
    hits: set[str] = set()
    work = Path(tempfile.mkdtemp(prefix="shipper-fuzz-open-"))
    try:
        directory = work / "spool"
        shutil.copytree(tpl.directory, directory)
        (directory / "lock").unlink(missing_ok=True)
        spans = _template_spans(tpl)
        untouched = _Untouched(spans, {n: (tpl.directory / "segments" / n).stat().st_size for n in tpl.files[:-1]})
        ledger_hit = False
        for op in ops:
            name = tpl.files[op[1] % len(tpl.files)]
            if name == "ledger.json":
                ledger_hit = True
                _mutate(directory / name, op)
                continue
            untouched.note(name, op)
            _mutate(directory / "segments" / name, op)
            if op[0] % 6 == 5:
                untouched.touched |= {s for _, _, s in spans[name]}
        m = Metrics()
        sp = DiskSpool(directory, spool_config(compression), m, lambda cp: None)
        loop = asyncio.new_event_loop()
        try:
            try:
                loop.run_until_complete(sp.open())
            except SpoolError:
                hits.add("spool-open-refused")
                return hits
            gaps = _segment_gaps(directory, min(tpl.records))
            cur = sp.cursor("s")
            lease = Lease()
            cur._take(lease, 1 << 30, 1 << 60)
            got = list(zip(lease.seqs, lease.batches, strict=True))
            loop.run_until_complete(sp.close())
        finally:
            sp._release_files()
            loop.close()
        seqs = [s for s, _ in got]
        assert seqs == sorted(set(seqs)), "records handed out twice or out of order"
        for seq, batch in got:
            assert seq in tpl.records, f"a record that was never written: seq {seq}"
            assert encode_record(batch) == tpl.records[seq], f"record {seq} changed on its way through"
        delivered = set(seqs)
        lost = set(tpl.records) - delivered
        # moved bytes (insert/delete/removed file) make "untouched" unknowable for that file
        shaken = {s for name in untouched.shaken for _, _, s in spans.get(name, [])}
        must = set(tpl.records) - untouched.touched - shaken
        assert must <= delivered, f"intact records not handed out: {sorted(must - delivered)}"
        counted = m.get("shipper_spool_corrupt_records_total")
        if len(lost) > counted:
            if ledger_hit:
                return hits  # the ledger's next_seq is what tells a lost tail: with it damaged, it cannot be told
            assert len(lost) <= counted + gaps, f"lost {sorted(lost)} but counted {counted}"
            hits.add("spool-segment-gap-uncounted")
        return hits
    finally:
        shutil.rmtree(work, ignore_errors=True)


def record_bytes(payload: bytes, seq: int = 1, flags: int = 0, events: int = 1) -> bytes:
    """A record around any payload, with a valid CRC."""
    head = fmt.RECORD_HEADER.pack(fmt.RECORD_MAGIC, 0, len(payload), flags, 0, seq, 7, 0, 0, events)
    crc = zlib.crc32(payload, zlib.crc32(memoryview(head)[fmt.CRC_FROM:]))
    return fmt.RECORD_MAGIC + crc.to_bytes(4, "little") + head[fmt.CRC_FROM:] + payload


def check_record(payload: bytes, compress: bool = False, seq: int = 1) -> set[str]:
    """A CRC-valid record whose payload is anything: decode() gives a batch or SpoolCorrupt, nothing else;
    decode_record raises only what its callers catch."""
    data = zlib.compress(payload, 1) if compress else payload
    buf = record_bytes(data, seq, fmt.FLAG_ZLIB if compress else 0)
    try:
        hdr, batch = fmt.decode(buf, seq)
    except SpoolCorrupt:
        pass
    else:
        assert hdr.seq == seq and isinstance(batch, Batch)
    with contextlib.suppress(ValueError, TypeError, KeyError, IndexError):
        decode_record(payload)
    return set()


def check_scan(buf: bytes, first_seq: int = 1) -> set[str]:
    """Any bytes as a segment: scan() never raises, and every byte after the segment header is either part
    of a valid record or counted as damage (nothing is skipped unaccounted); records decode or raise only
    SpoolCorrupt."""
    found = fmt.scan(buf, first_seq)
    end = len(buf)
    if end < fmt.SEG_HDR_SIZE:
        assert not found.headers
        assert sum(d.nbytes for d in found.damage) == end
        return set()
    spans = [(off, off + h.size) for h, off in zip(found.headers, found.offsets, strict=True)]
    spans += [(d.offset, d.offset + d.nbytes) for d in found.damage if d.reason != "bad_header"]
    spans.sort()
    pos = fmt.SEG_HDR_SIZE
    for lo, hi in spans:
        assert lo == pos, f"bytes {pos}..{lo} neither a record nor damage"
        assert hi > lo
        pos = hi
    assert pos == end, "the end of the segment is unaccounted"
    last = first_seq - 1
    for h, off in zip(found.headers, found.offsets, strict=True):
        assert h.seq > last
        last = h.seq
        with contextlib.suppress(SpoolCorrupt):
            fmt.decode(bytes(buf[off:off + h.size]), h.seq)
    return set()


# --- syslog --------------------------------------------------------------------------------------------

_PRINTUSASCII = re.compile(rb"[!-~]+")
_TS5424 = re.compile(rb"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{6})Z")
_MONTHS = {m: i + 1 for i, m in enumerate((b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug",
                                            b"Sep", b"Oct", b"Nov", b"Dec"))}


def _parse_sd(data: bytes, pos: int) -> int:
    """End of the STRUCTURED-DATA starting at `pos` (RFC 5424 §6.3), raising AssertionError if malformed."""
    if data[pos:pos + 1] == b"-":
        return pos + 1
    assert data[pos:pos + 1] == b"[", "SD is neither '-' nor an element"
    while data[pos:pos + 1] == b"[":
        m = re.compile(rb'[^ =\]"]{1,32}').match(data, pos + 1)
        assert m and _PRINTUSASCII.fullmatch(m.group()), "bad SD-ID"
        pos = m.end()
        while data[pos:pos + 1] == b" ":
            m = re.compile(rb'[^ =\]"]{1,32}').match(data, pos + 1)
            assert m and _PRINTUSASCII.fullmatch(m.group()), "bad PARAM-NAME"
            pos = m.end()
            assert data[pos:pos + 2] == b'="', "PARAM-NAME not followed by =\""
            pos += 2
            while True:
                c = data[pos:pos + 1]
                assert c, "PARAM-VALUE runs to the end"
                if c == b"\\" and data[pos + 1:pos + 2] in (b'"', b"\\", b"]"):
                    pos += 2
                    continue
                assert c != b"]", "unescaped ] in a PARAM-VALUE"
                pos += 1
                if c == b'"':
                    break
        assert data[pos:pos + 1] == b"]", "SD element not closed"
        pos += 1
    return pos


def _valid_date(m: re.Match[bytes]) -> bool:
    y, mo, d, h, mi, s = (int(x) for x in m.groups()[:6])
    try:
        datetime.datetime(y, mo, d, h, mi, s)
    except ValueError:
        return False
    return True


@dataclass
class SyslogCase:
    format: Format
    framing: Framing | None
    max_bytes: int
    meta: ContainerMeta
    events: list[Event]
    host_name: str = "host"
    app_name: str = "{container.name}"
    procid: str = NILVALUE
    msgid: str = "{stream}"
    sd_labels: bool = False
    bom: bool = False


def check_syslog(case: SyslogCase) -> set[str]:
    """Any events through SyslogEncoder.encode_batch: one message per event, framed as asked (octet count =
    length; LF only as the terminator), RFC 5424 / 3164 headers that parse back with fields in their
    limits, MSG whole or cut at a character boundary within max_bytes and then counted in `truncated`."""
    opts = EncoderOptions(format=case.format, app_name=case.app_name, procid=case.procid, msgid=case.msgid,
                          sd_labels=case.sd_labels, bom=case.bom, host_name=case.host_name)
    enc = SyslogEncoder(opts)
    out = enc.encode_batch(Batch(case.meta, case.events), case.max_bytes, case.framing)
    hits: set[str] = set()
    assert len(out.messages) == len(case.events)
    cut = 0
    nil_stamps = 0
    rfc5424 = case.format is Format.RFC5424
    escape = case.framing is Framing.LF
    for ev, framed in zip(case.events, out.messages, strict=True):
        if case.framing is Framing.OCTET_COUNTING:
            m = re.match(rb"([1-9]\d*) ", framed)
            assert m, "octet-counting frame without MSG-LEN"
            msg = framed[m.end():]
            assert int(m.group(1)) == len(msg), "MSG-LEN is not the message length"
        elif escape:
            assert framed.endswith(b"\n") and framed.count(b"\n") == 1, "LF framing with an LF inside"
            msg = framed[:-1]
        else:
            msg = framed
        if rfc5424:
            m = re.match(rb"<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) ", msg)
            assert m, f"RFC 5424 header does not parse: {msg[:200]!r}"
            stamp, host, app, procid, msgid = m.groups()[1:]
            for value, limit in ((host, HOSTNAME_MAX), (app, APP_NAME_MAX), (procid, PROCID_MAX),
                                 (msgid, MSGID_MAX)):
                assert _PRINTUSASCII.fullmatch(value) and len(value) <= limit, f"bad header field {value!r}"
            if stamp == b"-":
                nil_stamps += 1
            else:
                sm = _TS5424.fullmatch(stamp)
                if sm is None or not _valid_date(sm):
                    hits.add("syslog-invalid-timestamp")
            sd_end = _parse_sd(msg, m.end())
            rest = msg[sd_end:]
            if rest:
                assert rest[:1] == b" ", "no SP between SD and MSG"
                rest = rest[1:]
            body = rest[len(BOM):] if case.bom and rest.startswith(BOM) else rest
            head_len = len(msg) - len(body)
        else:
            m = re.match(rb"<(\d{1,3})>([A-Z][a-z]{2}) ([ 1-3]\d) (\d\d):(\d\d):(\d\d) (\S+) (\S+): ", msg)
            assert m, f"RFC 3164 header does not parse: {msg[:200]!r}"
            assert m.group(2) in _MONTHS and len(m.group(7)) <= HOSTNAME_MAX
            tag = m.group(8).split(b"[")[0]
            assert 0 < len(tag) <= TAG_MAX_3164 and _PRINTUSASCII.fullmatch(tag)
            body = msg[m.end():]
            head_len = m.end()
        assert 0 <= int(m.group(1)) <= 191
        full = ev.message.encode("utf-8", "replace")
        if escape:
            full = full.replace(b"\n", b"#012")
        if len(msg) > case.max_bytes:
            assert body == b"", "a message over max_bytes with MSG left in it"
            hits.add("syslog-header-over-limit")
        if body != full:
            cut += 1
            assert full.startswith(body), "MSG is not the message or a prefix of it"
            rest_full = full[len(body):]
            assert not rest_full or (rest_full[0] & 0xC0) != 0x80 or body == b"", "MSG cut inside a character"
            if escape:
                assert not body.endswith((b"#", b"#0", b"#01")) or full[len(body) - 1:].startswith(b"#"), \
                    "an LF escape cut in two"
        elif head_len + len(body) <= case.max_bytes:
            pass
    assert cut <= len(out.truncated), "MSG cut but not counted in truncated"
    if rfc5424:
        assert out.bad_timestamps == nil_stamps, "bad_timestamps does not match the NILVALUE stamps"
    return hits


# --- Docker API answers --------------------------------------------------------------------------------

_ENDPOINT = Endpoint("http://docker", unix_path="/nonexistent.sock")


class _FakeContent:
    def __init__(self, chunks: Sequence[bytes]) -> None:
        self._chunks = chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        for c in self._chunks:
            yield c


class _FakeResponse:
    def __init__(self, chunks: Sequence[bytes], date: str = "") -> None:
        self.headers = {"Date": date} if date else {}
        self.content = _FakeContent(chunks)

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class _FakeClient:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    async def inspect(self, cid: str) -> Any:
        return self.answer


def _discovery(metrics: Metrics, answer: Any = None) -> ApiDiscovery:
    d = ApiDiscovery(DockerClient(_ENDPOINT), make_config(host={"name": "h"}), metrics)
    d._client = _FakeClient(answer)  # type: ignore[assignment]
    return d


def _typed_info(info: ContainerInfo) -> bool:
    meta = info.meta
    strs = (meta.id, meta.name, meta.image, meta.host, info.log_driver, info.log_path, info.created,
            info.started_at)
    return (all(type(s) is str for s in strs) and bool(meta.id)
            and all(type(k) is str and type(v) is str for k, v in meta.labels.items())
            and all(type(k) is str and type(v) is str for k, v in meta.env.items())
            and all(type(b) is bool for b in (info.tty, info.running, info.auto_remove)))


def check_events(chunks: Sequence[bytes], date: str = "") -> set[str]:
    """The /events stream as any bytes: every complete non-blank line is an event dict or counted in
    shipper_docker_events_invalid_total; each event goes through ApiDiscovery's handler, which counts an
    odd shape and lets nothing else escape; what it reports is well typed."""
    hits: set[str] = set()
    m = Metrics()
    stream = EventStream(_FakeResponse(chunks, date), m)  # type: ignore[arg-type]
    try:
        evs = drain_sync(stream.__aiter__())
    except DockerError:
        return hits  # documented: an over-long line breaks the stream (reconnect)
    data = b"".join(chunks)
    complete = data[:data.rfind(b"\n") + 1] if b"\n" in data else b""
    lines = [ln for ln in complete.split(b"\n") if ln.strip()]
    assert len(evs) + m.get(EVENTS_INVALID) == len(lines), "an event line neither read nor counted"
    disc = _discovery(m)
    for ev in evs:
        assert isinstance(ev, dict)
        before = m.get(EVENTS_INVALID)
        try:
            changes, _ = disc._on_event_safe(ev)
        except (OverflowError, OSError) as e:
            assert "event_time" in _frames(e)
            hits.add("docker-event-time-overflow")
            continue
        for ch in changes:
            if ch.info is not None and not _typed_info(ch.info):
                hits.add("docker-untyped-fields")
        assert m.get(EVENTS_INVALID) - before in (0, 1)
    return hits


def check_inspect(doc: Any) -> set[str]:
    """An inspect answer of any shape through ApiDiscovery._inspect: a well-typed ContainerInfo, or None
    with shipper_docker_config_invalid_total counted; nothing escapes. The same object as config.v2.json
    through info_from_config_files: a ContainerInfo, OSError or ValueError (documented)."""
    hits: set[str] = set()
    m = Metrics()
    disc = _discovery(m, doc)
    info = run_sync(disc._inspect("c" * 64))
    if info is None:
        assert m.get(CONFIG_INVALID) == 1, "an unreadable inspect answer was not counted"
    else:
        assert m.get(CONFIG_INVALID) <= 1  # 1: fields of the wrong type were dropped, the rest used
        if not _typed_info(info):
            hits.add("docker-untyped-fields")
    d = _container_dir()
    (d / "config.v2.json").write_bytes(orjson.dumps(doc))
    host_config = doc.get("HostConfig") if isinstance(doc, dict) else None
    if host_config is not None:
        (d / "hostconfig.json").write_bytes(orjson.dumps(host_config))
    else:
        (d / "hostconfig.json").unlink(missing_ok=True)
    try:
        got = info_from_config_files(d, "h", ["A*"])
    except (OSError, ValueError):
        pass
    else:
        if not _typed_info(got):
            hits.add("docker-untyped-fields")
    return hits


_DIRS: list[Path] = []


def _container_dir() -> Path:
    """One <data_root>/containers/<id>/ per process, rewritten by every check_inspect."""
    if not _DIRS:
        d = Path(tempfile.mkdtemp(prefix="shipper-fuzz-cfg-")) / "containers" / ("c" * 64)
        d.mkdir(parents=True)
        _DIRS.append(d)
    return _DIRS[0]


def frames_oracle(data: bytes) -> tuple[list[tuple[int, bytes]], bool, bytes]:
    """Docker's multiplexed format read independently: (frames, broken header seen, cut frame left)."""
    out = []
    i = 0
    while len(data) - i >= 8:
        kind = data[i]
        length = struct.unpack(">L", data[i + 4:i + 8])[0]
        if kind > SYSTEMERR or data[i + 1:i + 4] != b"\0\0\0" or length > MAX_FRAME:
            return out, True, b""
        if i + 8 + length > len(data):
            break
        out.append((kind, data[i + 8:i + 8 + length]))
        i += 8 + length
    return out, False, data[i:]


def check_frames(chunks: Sequence[bytes], tty: bool = False) -> set[str]:
    """The log stream as any bytes, cut anywhere: the frame decoder returns exactly the frames an
    independent reader finds (BrokenStream at a bad header: documented, the reader reconnects), a frame cut
    by the end is counted, and every frame is handed to the assembler or counted as invalid by reason."""
    m = Metrics()
    info = ContainerInfo(ContainerMeta("c" * 64, "web"), tty=tty)
    cfg = make_config(multiline={"mode": "off"})
    src = ApiSource(info, SourceContext(cfg, m, _never_emit), None, client=DockerClient(_ENDPOINT))
    adds: list[tuple[Any, ...]] = []
    real = src._asm.add

    def spy(ts: Any, stream: Any, text: Any, pos: Any) -> None:
        real(ts, stream, text, pos)
        adds.append((ts, stream, text, pos))

    src._asm.add = spy  # type: ignore[method-assign]
    decoded: list[tuple[int, bytes]] = []
    broken = False
    for chunk in chunks:
        try:
            frames = src._decoder.feed(chunk)
        except BrokenStream:
            broken = True
            break
        decoded += frames
        src._feed(frames)
    if not broken:
        last = src._final_frames()
        decoded += last
        src._feed(last)
    data = b"".join(chunks)
    if tty:
        if not broken:
            assert b"".join(p for _, p in decoded) == data, "TTY bytes lost or added"
    else:
        want, bad, cut = frames_oracle(data)
        assert broken == bad, "BrokenStream does not match a bad frame header"
        if broken:
            assert decoded == want[:len(decoded)]
        else:
            assert decoded == want, "frames differ from an independent reading"
            assert invalid_counts(m)["cut_frame"] == (1 if cut else 0)
    counts = invalid_counts(m)
    counts.pop("cut_frame", None)
    assert len(adds) + sum(counts.values()) == len(decoded), "a frame neither handed on nor counted"
    for ts, stream, text, _ in adds:
        assert type(ts) is str and stream in ("stdout", "stderr") and type(text) is str
    src._asm.flush()
    src._asm.take()
    return set()
