"""Adapters exposing third-party environments under roboloop's Dict-observation contract."""
