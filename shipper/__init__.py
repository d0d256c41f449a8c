"""shipper: a log shipper for Docker hosts."""

__version__ = "0.1.0"
