"""What discovery learns of a container: its metadata for enrichment, and where and how to read its log."""

from __future__ import annotations

from dataclasses import dataclass

from shipper.event import ContainerMeta


@dataclass
class ContainerInfo:
    meta: ContainerMeta
    log_driver: str = "json-file"
    log_path: str = ""  # json-file path; "" when the driver writes none
    tty: bool = False
    running: bool = True
    created: str = ""  # RFC 3339, for the API reader's first `since`
