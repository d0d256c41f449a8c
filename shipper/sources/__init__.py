"""Readers of container logs: json-file on disk, or the Engine API log stream."""
