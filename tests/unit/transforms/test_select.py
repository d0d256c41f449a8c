"""Container selection: name and image globs, labels, shipper.enable, opt_in; each answer has a reason."""

from __future__ import annotations

from typing import Any

import pytest

from shipper.config import SelectConfig
from shipper.event import ContainerMeta
from shipper.schema import build
from shipper.transforms.select import Selector, image_repository

WEB = ContainerMeta(id="a" * 64, name="/shop-web-1", image="registry.example:5000/shop/web:1.4",
                    labels={"com.docker.compose.project": "shop", "team": "team-shop"})
DB = ContainerMeta(id="b" * 64, name="billing-db", image="postgres:16@sha256:abc", labels={"tier": "db"})


def sel(**cfg: Any) -> Selector:
    return Selector(build(SelectConfig, cfg, "select"))


def test_default_ships_everything() -> None:
    s = sel()
    assert s.decide(WEB) == (True, "selected") and s.wants(DB)


@pytest.mark.parametrize(("cfg", "web", "db"), [
    ({"include_names": ["shop-*"]}, True, False),
    ({"exclude_names": ["*-db"]}, True, False),
    ({"include_images": ["postgres"]}, False, True),  # the repository without tag or digest
    ({"include_images": ["*/shop/*"]}, True, False),
    ({"exclude_images": ["registry.example:5000/*"]}, False, True),
    ({"include_labels": ["tier"]}, False, True),
    ({"include_labels": ["team=team-*"]}, True, False),
    ({"include_labels": ["team=other", "tier=d?"]}, False, True),
    ({"exclude_labels": ["com.docker.compose.project=shop"]}, False, True),
    ({"include_names": ["*"], "exclude_names": ["shop-web-1"]}, False, True),  # exclude wins
])
def test_globs_and_labels(cfg: dict[str, Any], web: bool, db: bool) -> None:
    s = sel(**cfg)
    assert (s.wants(WEB), s.wants(DB)) == (web, db)


def test_shipper_enable_false_always_excludes() -> None:
    off = ContainerMeta(id="c" * 64, name="shop-web-2", image="x", labels={"shipper.enable": "false"})
    s = sel(include_names=["shop-*"])
    assert s.decide(off) == (False, "label shipper.enable=false")


def test_opt_in_ships_only_enabled_containers_and_still_applies_excludes() -> None:
    on = ContainerMeta(id="d" * 64, name="on", image="x", labels={"shipper.enable": "true"})
    on_excluded = ContainerMeta(id="e" * 64, name="noisy", image="x", labels={"shipper.enable": "True"})
    s = sel(opt_in=True, exclude_names=["noisy"])
    assert s.decide(on) == (True, "label shipper.enable=true")
    ok, why = s.decide(WEB)
    assert not ok and "opt_in" in why
    ok, why = s.decide(on_excluded)
    assert not ok and "exclude_names" in why and "'noisy'" in why


def test_reasons_name_the_rule() -> None:
    assert "include_images" in sel(include_images=["nginx"]).reason(WEB)
    assert "exclude_labels 'tier'" in sel(exclude_labels=["tier"]).reason(DB)
    assert "include_labels" in sel(include_labels=["nope"]).reason(DB)


def test_image_repository() -> None:
    assert image_repository("nginx:1.25") == "nginx"
    assert image_repository("registry:5000/a/b") == "registry:5000/a/b"
    assert image_repository("registry:5000/a/b:tag@sha256:00") == "registry:5000/a/b"
