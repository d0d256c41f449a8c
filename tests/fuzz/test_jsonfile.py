"""Fuzz: json-file lines through the parser's hot loop (`_Parser._parse`) and the LineAssembler."""

from __future__ import annotations

import pytest
from hypothesis import given

from shipper.config import Config
from shipper.telemetry.metrics import Metrics
from tests.fuzz import props
from tests.fuzz.strategies import assemble_ops, budget, jsonfile_input


@budget(1.0)
@given(jsonfile_input())
def test_every_line_is_an_entry_or_counted(case: tuple[bytes, list[int], int]) -> None:
    data, cuts, variant = case
    props.only_open_bugs(props.check_jsonfile(data, cuts, variant))


@budget(1.0)
@given(assemble_ops())
def test_assembler_keeps_every_line_in_order(case: tuple[list[tuple[int, int, str]], int]) -> None:
    ops, variant = case
    props.only_open_bugs(props.check_assemble(ops, variant))


@pytest.mark.parametrize("line", [
    b'{"log":"x\\n","stream":"stdout","time":5}',
    b'{"log":"x\\n","stream":5,"time":"2024-05-01T12:00:00.000000001Z"}',
    b'{"log":0,"stream":"stdout","time":"2024-05-01T12:00:00.000000001Z"}',
    b'{"log":null,"stream":"stdout","time":"2024-05-01T12:00:00.000000001Z"}',
])
def test_bug_wrong_types_are_counted(line: bytes) -> None:
    m = Metrics()
    p = props.FuzzParser(Config(), m)
    p._parse(line + b"\n")
    assert p.adds == []
    assert m.get("shipper_lines_invalid_total", container=props.LABEL, reason="wrong_type") == 1
