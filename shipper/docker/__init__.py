"""The Docker Engine API: client, container discovery, metadata."""
