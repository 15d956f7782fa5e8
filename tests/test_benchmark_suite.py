"""The performance suite's driver (benchmarks/run_benchmarks.py) on its one machine-independent case: the
FLOPs of the paper's patch embedding against the fused Conv3d, counted on the meta device."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "run_benchmarks.py"


def test_suite_runs_a_case_and_writes_its_json(tmp_path):
    output = tmp_path / "cpu.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cases", "patch_embed_flops", "--output", str(output)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "patch_embed_flops" in proc.stdout and f"written {output}" in proc.stdout
    payload = json.loads(output.read_text())
    result = payload["results"]["patch_embed_flops"]
    assert result["gflop_paper"] / result["gflop_fused"] == pytest.approx(result["ratio"]) and result["ratio"] >= 10
    assert payload["machine"]["device"] == "cpu" and payload["machine"]["cpu_count"] >= 1


def test_gpu_suite_refuses_clearly_without_cuda(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the GPU suite would run")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--gpu", "--output", str(tmp_path / "gpu.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
    assert not (tmp_path / "gpu.json").exists()
