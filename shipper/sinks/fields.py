"""The value of one `{field}` of a sink's template (syslog APP-NAME/PROCID/MSGID, Kafka topic and key).

One lookup, so a field named the same in two sinks' templates means the same thing in both. Each sink decides
which names its templates accept; this only answers for a name it accepted.
"""

from __future__ import annotations

from shipper.event import ContainerMeta

LABEL_PREFIX = "label."  # `{label.NAME}`: the container's label NAME


def template_field(meta: ContainerMeta, host: str, stream: str, name: str) -> str:
    """`name`'s value for an event of this container on `stream`; "" when the container lacks it.

    `host.name` is the host the container's metadata names, else `host` (this shipper's); any name that is not
    a known field is read as `label.NAME`."""
    if name == "container.id":
        return meta.id
    if name == "container.name":
        return meta.name.lstrip("/")
    if name == "container.image":
        return meta.image
    if name == "compose.project":
        return meta.compose_project or ""
    if name == "compose.service":
        return meta.compose_service or ""
    if name == "host.name":
        return meta.host or host
    if name == "stream":
        return stream
    return meta.labels.get(name[len(LABEL_PREFIX):], "")
