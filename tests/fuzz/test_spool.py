"""Fuzz: spool records and segments (`decode`, `scan`) and `DiskSpool.open()` on damaged segment files."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shipper.buffer import segment as fmt
from shipper.buffer.base import Lease
from shipper.buffer.spool import DiskSpool
from shipper.telemetry.metrics import Metrics
from tests.fuzz import props
from tests.fuzz.strategies import RECORD_PAYLOAD, SPOOL_OPS, budget


@budget(0.5)
@given(SPOOL_OPS, st.booleans())
def test_open_recovers_and_counts_damage(ops: list[props.SpoolOp], compression: bool) -> None:
    props.only_open_bugs(props.check_spool_open(ops, compression))


@budget(1.0)
@given(RECORD_PAYLOAD, st.booleans(), st.integers(0, 2**64 - 1))
def test_record_decodes_or_is_spool_corrupt(payload: bytes, compress: bool, seq: int) -> None:
    props.only_open_bugs(props.check_record(payload, compress, seq))


@st.composite
def damaged_segment(draw: st.DrawFn) -> tuple[bytes, int]:
    tpl = props.spool_template(draw(st.booleans()))
    name = draw(st.sampled_from(tpl.files[:-1]))
    buf = bytearray((tpl.directory / "segments" / name).read_bytes())
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(buf) - 1))
        how = draw(st.integers(0, 3))
        if how == 0:
            buf[i] ^= draw(st.integers(1, 255))
        elif how == 1:
            del buf[i:]
        elif how == 2:
            buf[i:i] = draw(st.binary(max_size=60))
        else:
            buf += buf[i:i + draw(st.integers(1, 200))]
        if not buf:
            break
    first = int(name.split(".")[0])
    return bytes(buf), draw(st.sampled_from([first, first, first + 1, 0]))


@budget(1.0)
@given(st.one_of(damaged_segment(), st.tuples(st.binary(max_size=300), st.integers(0, 5))))
def test_scan_accounts_for_every_byte(case: tuple[bytes, int]) -> None:
    props.only_open_bugs(props.check_scan(*case))


def _open_and_read(directory: Path) -> tuple[set[int], float]:
    async def go() -> tuple[set[int], float]:
        m = Metrics()
        sp = DiskSpool(directory, props.spool_config(), m, lambda cp: None)
        await sp.open()
        lease = Lease()
        sp.cursor("s")._take(lease, 1 << 30, 1 << 60)
        await sp.close()
        return set(lease.seqs), m.get("shipper_spool_corrupt_records_total")
    return asyncio.run(go())


@pytest.mark.parametrize("damage", ["remove_middle_segment", "cut_sealed_segment_at_a_record"])
def test_bug_records_missing_between_segments_are_counted(tmp_path: Path, damage: str) -> None:
    tpl = props.spool_template(False)
    directory = tmp_path / "spool"
    shutil.copytree(tpl.directory, directory)
    (directory / "lock").unlink(missing_ok=True)
    victim = directory / "segments" / tpl.files[1]
    if damage == "remove_middle_segment":
        victim.unlink()
    else:
        data = victim.read_bytes()
        found = fmt.scan(data, int(victim.name.split(".")[0]))
        victim.write_bytes(data[:found.offsets[-1]])  # the last record gone whole: ends on a record boundary
    delivered, counted = _open_and_read(directory)
    lost = set(tpl.records) - delivered
    assert lost
    assert counted >= len(lost)
