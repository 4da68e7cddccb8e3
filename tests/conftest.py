"""Puts tests/ on sys.path (pytest inserts a rootless conftest's directory) for fixture_paths."""
