"""Paths the tests share (tests/ is on sys.path through its conftest.py)."""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
