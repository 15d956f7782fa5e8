"""Shared pytest configuration: the ``slow`` marker and the shared real-data folder.

Slow tests (nnU-Net subprocess runs) still run by default, so CI runs them; ``-m "not slow"`` skips them.

The README's test command runs the suite on two pytest-xdist workers (``-n 2 --dist loadgroup``): half of the suite's
wall time is subprocess start-up, file I/O and single-threaded Python, which a second worker overlaps. Each test
module is one group, so a module's fixtures (trained models) are built once, on one worker; ``test_demo.py`` and
``test_benchmark.py`` share the reduced demo's work folder and form one group. The heaviest modules are scheduled
first so that the two workers finish together. Each worker computes on one thread and its OpenMP threads sleep
instead of spinning while they wait (``OMP_WAIT_POLICY=PASSIVE``, inherited by the nnU-Net subprocesses): two
workers each spinning two threads on two cores stall each other for minutes.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # before torch is imported (OpenMP reads these once)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# ../shared/data beside the clone (CI has the same layout); SAM3D_SHARED_DATA overrides
SHARED_DATA = Path(os.environ.get("SAM3D_SHARED_DATA",
                                  Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs nnU-Net end to end in subprocesses (minutes); "
                                       "deselect with -m 'not slow'")
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist runs a group's tests on one worker")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch
        torch.set_num_threads(1)


# modules sharing a session fixture's folder run on one worker
SHARED_GROUPS = {"test_demo": "reduced_demo", "test_benchmark": "reduced_demo"}
# the modules that take longest (about 2-4 minutes each on 2 cores, measured with --durations), started first
HEAVY_MODULES = ("test_trainer_integration", "test_learning", "test_datasets", "test_validation_folders",
                 "test_benchmark", "test_demo", "test_reliability_faults", "test_slim_checkpoint",
                 "test_import_reference", "test_reference_fidelity", "test_predict")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """One xdist group per module (see the module docstring), heaviest modules first; the order within a module
    is kept."""
    def module(item) -> str:
        return Path(str(item.fspath)).stem

    for item in items:
        item.add_marker(pytest.mark.xdist_group(SHARED_GROUPS.get(module(item), module(item))))
    rank = {name: i for i, name in enumerate(HEAVY_MODULES)}
    items.sort(key=lambda item: rank.get(module(item), len(rank)))  # stable: file order otherwise


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder (may not exist: tests using it must skip with a reason)."""
    return SHARED_DATA
