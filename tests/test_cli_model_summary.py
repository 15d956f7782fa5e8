"""``sam3d-nnunet model-summary`` as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys

from sam3d_nnunet.model import write_random_sam_checkpoint


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sam3d_nnunet.cli", *args], capture_output=True, text=True, timeout=300)


def test_model_summary_json_paper_configuration():
    result = run_cli("model-summary", "--variant", "vit_b", "--patch-size", "128", "128", "128", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    for key in ("encoder_trainable", "encoder_frozen", "prompt_encoder", "decoder", "total_trainable", "total"):
        assert isinstance(summary[key], int) and summary[key] > 0
    assert summary["token_grid"] == [32, 32, 32]
    assert abs(summary["encoder_trainable"] - 15.21e6) / 15.21e6 < 0.03


def test_model_summary_with_checkpoint_reports_used_and_dropped(tmp_path):
    path = write_random_sam_checkpoint("tiny", tmp_path / "sam_tiny.pth")
    result = run_cli("model-summary", "--variant", "tiny", "--patch-size", "16", "32", "16", "--window-size", "4",
                     "--checkpoint", str(path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["checkpoint"]
    assert report["variant"] == "tiny" and report["used"] > 0 and report["dropped_groups"]["mask_decoder."] > 0

    wrong = run_cli("model-summary", "--variant", "vit_b", "--checkpoint", str(path))
    assert wrong.returncode == 1
    assert "sam_tiny.pth: holds a SAM tiny" in wrong.stderr and "Traceback" not in wrong.stderr
