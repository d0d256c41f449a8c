"""Fuzz tests: properties of every parser of outside input, run by hypothesis here and by run_long.py."""
