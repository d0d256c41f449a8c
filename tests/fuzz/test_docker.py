"""Fuzz: Docker API answers: the /events stream, inspect answers (and config.v2.json), the log stream."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given

from shipper.docker.metadata import info_from_event, info_from_inspect
from shipper.telemetry.metrics import Metrics
from tests.fuzz import props
from tests.fuzz.strategies import INSPECT_DOC, budget, event_chunks, frame_chunks


@budget(1.0)
@given(event_chunks())
def test_events_are_read_or_counted(chunks: list[bytes]) -> None:
    props.only_open_bugs(props.check_events(chunks))


@budget(1.0)
@given(INSPECT_DOC)
def test_inspect_answer_is_info_or_counted(doc: Any) -> None:
    props.only_open_bugs(props.check_inspect(doc))


@budget(1.0)
@given(frame_chunks())
def test_log_stream_frames_are_entries_or_counted(case: tuple[list[bytes], bool]) -> None:
    chunks, tty = case
    props.only_open_bugs(props.check_frames(chunks, tty))


@pytest.mark.parametrize("when", [{"time": 10**17}, {"time": -(10**17)}, {"time": 1e300}])
def test_bug_event_time_out_of_range_is_counted(when: dict[str, float]) -> None:
    m = Metrics()
    disc = props._discovery(m)
    ev = {"Type": "container", "Action": "start", "Actor": {"ID": "a" * 64, "Attributes": {"name": "x"}}, **when}
    disc._on_event_safe(ev)
    assert m.get("shipper_docker_events_invalid_total") == 1


@pytest.mark.parametrize("source", ["event", "inspect"])
def test_bug_non_string_fields_are_refused(source: str) -> None:
    if source == "event":
        info = info_from_event({"Action": "start", "from": 5,
                                "Actor": {"ID": "a" * 64, "Attributes": {"name": "x", "tier": 1}}}, "h")
    else:
        info = info_from_inspect({"Id": "c" * 64, "Created": 5, "Config": {"Labels": {"tier": 1}}}, "h", [])
    assert props._typed_info(info)
