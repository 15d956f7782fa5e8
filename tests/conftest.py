"""Shared pytest configuration: the ``slow`` marker and the shared real-data folder.

Slow tests (nnU-Net subprocess runs) still run by default, so CI runs them; ``-m "not slow"`` skips them.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# ../shared/data beside the clone (CI has the same layout); SAM3D_SHARED_DATA overrides
SHARED_DATA = Path(os.environ.get("SAM3D_SHARED_DATA",
                                  Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs nnU-Net end to end in subprocesses (minutes); "
                                       "deselect with -m 'not slow'")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder (may not exist: tests using it must skip with a reason)."""
    return SHARED_DATA
