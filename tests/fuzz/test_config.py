"""Fuzz: the config loader (`load_dict`) on any TOML-like tree: a Config or a ConfigError naming a key."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given

from shipper.config import load_dict
from shipper.errors import ConfigError
from tests.fuzz import props
from tests.fuzz.strategies import ENV, budget, config_tree


@budget(1.5)
@given(config_tree(), ENV)
def test_only_config_errors_naming_a_key(tree: dict[str, Any], env: dict[str, str]) -> None:
    props.only_open_bugs(props.check_config(tree, env))


@pytest.mark.parametrize(("tree", "key"), [
    ({"input": {"max_event_bytes": "1" + "0" * 400}}, "input.max_event_bytes"),
    ({"docker": {"poll_interval_secs": 10**400}}, "docker.poll_interval_secs"),
])
def test_bug_number_overflow_is_a_config_error(tree: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_dict(tree, env={})
    assert e.value.key == key


@pytest.mark.parametrize("pattern", ["a{99999999999}", "(" * 1100])
def test_bug_bad_regex_is_a_config_error(pattern: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_dict({"multiline": {"mode": "pattern", "start_pattern": pattern}}, env={})
    assert e.value.key == "multiline.start_pattern"
