"""Rebuilding what the application wrote: partial join, multi-line merge, JSON detection, selection."""
