"""Rebuilds what the application wrote from Docker's log entries (stub: interface only)."""
