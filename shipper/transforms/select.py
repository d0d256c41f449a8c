"""Which containers to ship, decided once per container (not per event) from `[select]`.

Order of the rules, first match wins: the label `shipper.enable=false` always excludes; with `opt_in` only
`shipper.enable=true` containers go on; then the exclude lists (names, images, labels); then, for each
include list that is not empty, the container must match it. Every answer carries a short reason for the
log line that says why a container is or is not read.

Names are matched without Docker's leading "/". Image globs are tried on the image as written and on its
repository without tag or digest, so `nginx` matches `nginx:1.25` and `*/shop/*` matches
`registry.example/shop/web:1.4`. Labels are `key` (present, any value) or `key=value-glob`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from shipper.config import SelectConfig
from shipper.event import ContainerMeta

ENABLE_LABEL = "shipper.enable"


@dataclass(frozen=True, slots=True)
class LabelRule:
    key: str
    value_glob: str | None  # None: the key only has to be present

    @classmethod
    def parse(cls, spec: str) -> LabelRule:
        key, sep, glob = spec.partition("=")
        return cls(key.strip(), glob if sep else None)

    def matches(self, labels: dict[str, str]) -> bool:
        value = labels.get(self.key)
        if value is None:
            return False
        return self.value_glob is None or fnmatchcase(value, self.value_glob)

    def __str__(self) -> str:
        return self.key if self.value_glob is None else f"{self.key}={self.value_glob}"


def image_repository(image: str) -> str:
    """`registry:5000/a/b:tag@sha256:...` -> `registry:5000/a/b` (a port's colon is not a tag's)."""
    image = image.split("@", 1)[0]
    slash = image.rfind("/")
    colon = image.rfind(":")
    return image[:colon] if colon > slash else image


def _first_glob(value: str, globs: list[str]) -> str | None:
    for g in globs:
        if fnmatchcase(value, g):
            return g
    return None


class Selector:
    """`wants(meta)` for the pipeline, `decide(meta)` when the reason is wanted too."""

    def __init__(self, cfg: SelectConfig) -> None:
        self.cfg = cfg
        self._include_labels = [LabelRule.parse(s) for s in cfg.include_labels]
        self._exclude_labels = [LabelRule.parse(s) for s in cfg.exclude_labels]

    def wants(self, meta: ContainerMeta) -> bool:
        return self.decide(meta)[0]

    def reason(self, meta: ContainerMeta) -> str:
        return self.decide(meta)[1]

    def decide(self, meta: ContainerMeta) -> tuple[bool, str]:
        cfg = self.cfg
        labels = meta.labels
        enable = labels.get(ENABLE_LABEL, "").strip().lower()
        if enable == "false":
            return False, f"label {ENABLE_LABEL}=false"
        if cfg.opt_in and enable != "true":
            return False, f"select.opt_in and no label {ENABLE_LABEL}=true"
        name = meta.name.lstrip("/")
        images = self._images(meta.image)
        g = _first_glob(name, cfg.exclude_names)
        if g is not None:
            return False, f"name matches select.exclude_names {g!r}"
        for image in images:
            g = _first_glob(image, cfg.exclude_images)
            if g is not None:
                return False, f"image matches select.exclude_images {g!r}"
        for rule in self._exclude_labels:
            if rule.matches(labels):
                return False, f"label matches select.exclude_labels {str(rule)!r}"
        if cfg.include_names and _first_glob(name, cfg.include_names) is None:
            return False, "name matches no select.include_names"
        if cfg.include_images and all(_first_glob(i, cfg.include_images) is None for i in images):
            return False, "image matches no select.include_images"
        if self._include_labels and not any(r.matches(labels) for r in self._include_labels):
            return False, "no label of select.include_labels"
        if cfg.opt_in:
            return True, f"label {ENABLE_LABEL}=true"
        return True, "selected"

    @staticmethod
    def _images(image: str) -> tuple[str, ...]:
        repo = image_repository(image)
        return (image,) if repo == image else (image, repo)
