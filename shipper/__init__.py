"""shipper: a log shipper for Docker hosts."""

__version__ = "0.1.0"

# What the compiled build compiles (setup.py, SHIPPER_COMPILE=1): what every json-file entry goes through,
# and the syslog encoder (each event's message built field by field).
HOT_PATH = ("shipper.transforms.assemble", "shipper.sources.jsonfile.lines", "shipper.buffer.sizing",
            "shipper.sinks.syslog.encode")


def compiled() -> bool:
    """Whether the per-entry hot path runs compiled (the build with SHIPPER_COMPILE=1) or as pure Python."""
    from shipper.transforms import assemble

    return not (assemble.__file__ or "").endswith(".py")
