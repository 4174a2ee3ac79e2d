"""Helpers without a domain: atomic file writes, video files."""
