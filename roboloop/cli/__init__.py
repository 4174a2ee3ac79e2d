"""Thin entry points: parse the config, build objects, call the library."""
