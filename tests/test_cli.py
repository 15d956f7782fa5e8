"""The ``sam3d-nnunet`` command as a new user meets it: a fast ``--help``, one ``error:`` line for a dataset it cannot
plan, and no warning noise."""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from reliability_helpers import cli_env, run_cli

HELP_IMPORTS = r"""
import sys
from sam3d_nnunet.cli import main
try:
    main(["--help"])
except SystemExit as e:
    assert e.code == 0, e.code
print("HEAVY", sorted(m for m in ("torch", "nnunetv2", "numpy", "SimpleITK", "timm") if m in sys.modules))
"""


def test_help_lists_every_command_without_importing_torch():
    from sam3d_nnunet.cli import SUBCOMMANDS
    p = subprocess.run([sys.executable, "-c", HELP_IMPORTS], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "HEAVY []" in p.stdout, p.stdout[-500:]
    for name in SUBCOMMANDS:
        assert name in p.stdout
    console = run_cli(["--help"])
    assert console.returncode == 0 and "plan_and_preprocess" in console.stdout, console.stderr
    assert console.stderr == ""


def test_listed_help_is_each_commands_own():
    """The one-line help ``--help`` lists without importing a command is the text the command registers."""
    from sam3d_nnunet.cli import SUBCOMMANDS, SUMMARIES
    assert set(SUMMARIES) == set(SUBCOMMANDS)
    for name, module_name in SUBCOMMANDS.items():
        subparsers = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module_name).add_parser(subparsers)
        (action,) = subparsers._choices_actions
        assert (action.dest, action.help) == (name, SUMMARIES[name])


def test_a_command_still_gets_its_full_parser():
    p = run_cli(["model-summary", "--help"])
    assert p.returncode == 0 and "--patch-size" in p.stdout, p.stderr


@pytest.fixture()
def nnunet_env(tmp_path):
    folders = {v: tmp_path / v for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for f in folders.values():
        f.mkdir()
    return cli_env(**folders), folders["nnUNet_raw"]


def _assert_one_error_line(p: subprocess.CompletedProcess, *words: str) -> str:
    lines = p.stderr.splitlines()
    assert p.returncode == 1, (p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stderr + p.stdout, p.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("sam3d-nnunet plan_and_preprocess: error: "), p.stderr[-3000:]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def test_plan_and_preprocess_of_an_unknown_dataset_is_one_error_line(nnunet_env):
    env, raw = nnunet_env
    p = run_cli(["plan_and_preprocess", "-d", "777", "-c", "3d_fullres", "--sam-variant", "tiny"], env=env)
    _assert_one_error_line(p, "no dataset 777", str(raw), "Dataset777_")
    assert "torch.jit.interface" not in p.stderr + p.stdout, "timm's FutureWarning is filtered"


def test_plan_and_preprocess_refuses_a_region_based_dataset_in_one_line(nnunet_env):
    env, raw = nnunet_env
    folder = raw / "Dataset778_Regions"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "whole": [1, 2], "core": 2},
        "regions_class_order": [1, 2], "numTraining": 0, "file_ending": ".nii.gz"}))
    p = run_cli(["plan_and_preprocess", "-d", "778", "-c", "3d_fullres", "--sam-variant", "tiny"], env=env)
    _assert_one_error_line(p, "Dataset778_Regions is region-based", "whole", "ONE integer class")
    assert not list((raw.parent / "nnUNet_preprocessed").iterdir()), "nothing fingerprinted or planned"


def test_importing_the_package_filters_only_timms_torch_jit_warning():
    code = ("import warnings, sam3d_nnunet\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.warn('`torch.jit.interface` is deprecated. Please use `torch.compile` instead.', "
            "FutureWarning)\n"
            "    warnings.warn('something else', FutureWarning)\n"
            "print([str(x.message) for x in w])\n")
    p = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "['something else']"
