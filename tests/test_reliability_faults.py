"""Faults, end to end, with nothing lost (issue 7, part 1).

* training: ``nnUNetv2_train -tr nnUNetTrainerSAM3D_5epochs -p SAM3DPlans -device cpu`` on 6 tiny CT phantoms is
  SIGKILLed at a seeded random moment, then killed again from inside ``torch.save`` with a seeded share of the
  checkpoint's bytes written (the process dies while ``.checkpoint_*.<hex>.tmp.pth`` is half written), then
  resumed with ``--c`` to the end. After every kill every ``checkpoint_*.pth`` on disk loads (``torch.load``,
  ``weights_only=True``); the finished run has 5 epochs in its checkpoint and the resumed log continues where the
  checkpoint left off. (A SIGKILLed trainer's data-augmentation workers outlive it, nnU-Net's behaviour; the
  tests kill the whole process group, as a scheduler or a shell's kill of the job does.)
* prediction: ``sam3d-nnunet predict`` on the trained model and 6 cases is SIGKILLed at a seeded random moment and
  again from inside the image writer of a seeded case; no incomplete file ever sits under a final name, and the
  rerun completes with masks identical to an uninterrupted run.
* two predictions into one output folder at the same time: both succeed, every output equals the single-process
  run; a temporary file another process is writing is not removed as "stale".
* determinism on CPU: the same inputs, clicks and seed give byte-identical masks (and probabilities) run after
  run, in-process and on the command line.

Every fault is appended to the reliability log (``reliability_helpers.record``) for BENCHMARKS.md.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reliability_helpers import assert_complete_images, cli_env, exe, image_is_complete, record
from test_trainer_integration import Pipeline, _run

SEED = 7_2024
TRAINER = "nnUNetTrainerSAM3D_5epochs"
N_EPOCHS = 5
SUITE = "faults"

# Dies inside the N-th torch.save of a checkpoint's temporary file, after writing a share of its bytes.
DYING_TRAIN = r"""
import io, os, signal, sys
import torch
N, SHARE = int(os.environ["SAM3D_FAULT_SAVE_INDEX"]), float(os.environ["SAM3D_FAULT_SHARE"])
real_save, calls = torch.save, [0]
def dying_save(obj, f, *args, **kwargs):
    if isinstance(f, (str, os.PathLike)) and os.fspath(f).endswith(".tmp.pth"):
        calls[0] += 1
        if calls[0] == N:
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            with open(f, "wb") as fh:
                fh.write(data[: int(len(data) * SHARE)])
                fh.flush()
                os.fsync(fh.fileno())
            print(f"FAULT: SIGKILL after {int(len(data) * SHARE)} of {len(data)} bytes of {os.path.basename(f)}",
                  flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = dying_save
from nnunetv2.run.run_training import run_training_entry
sys.argv = ["nnUNetv2_train", *sys.argv[1:]]
run_training_entry()
"""

# Dies inside nnU-Net's segmentation writer on the K-th case, after writing half a file under its (temporary) name.
DYING_PREDICT = r"""
import os, signal, sys
from pathlib import Path
import SimpleITK as sitk
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
K, calls, real = int(os.environ["SAM3D_FAULT_CASE_INDEX"]), [0], SimpleITKIO.write_seg
def dying_write_seg(self, seg, output_fname, properties):
    calls[0] += 1
    if calls[0] == K:
        real(self, seg, output_fname, properties)
        data = Path(output_fname).read_bytes()
        Path(output_fname).write_bytes(data[: len(data) // 2])
        print(f"FAULT: SIGKILL while writing {output_fname}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, seg, output_fname, properties)
SimpleITKIO.write_seg = dying_write_seg
from sam3d_nnunet.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the run we started, with its worker processes
    proc.wait(timeout=60)


def _run_until_it_dies(cmd, env, log_path: Path, timeout: float = 600) -> tuple:
    """Run a command that kills itself; then SIGKILL what is left of its process group (nnU-Net's data-loader
    workers outlive a killed trainer and would hold its pipes open). Returns (status, output)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=60)
    return status, log_path.read_text()


def _wait_for(proc: subprocess.Popen, condition, what: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the process ended (status {proc.returncode}) before {what}"
        assert time.time() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def _checkpoints_on_disk(fold: Path) -> dict:
    """Load EVERY checkpoint under a final name (torch.load, weights_only=True): {name: current_epoch}."""
    from sam3d_nnunet.validation import load_checkpoint_safely
    out = {}
    for p in sorted(fold.glob("checkpoint_*.pth")):
        ckpt = load_checkpoint_safely(p)  # raises if truncated / unreadable
        out[p.name] = int(ckpt["current_epoch"])
    return out


def _temporaries(fold: Path) -> list:
    return sorted(p.name for p in fold.glob(".checkpoint_*.tmp.pth"))


# ================================================================================================ training
@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """6 CT phantoms (32^3 at 3 mm), planned and preprocessed with the SAM3D planner (tiny variant)."""
    from sam3d_nnunet.model import write_random_sam_checkpoint
    from sam3d_nnunet.phantoms import generate_phantom_dataset
    root = tmp_path_factory.mktemp("reliability_faults")
    generate_phantom_dataset(root / "raw", 962, "RelFaults", n_cases=6, shape=(32, 32, 32), seed=0,
                             spacing=(3.0, 3.0, 3.0))
    pipe = Pipeline(root, 962, "Dataset962_RelFaults", write_random_sam_checkpoint("tiny", root / "sam.pth", seed=1))
    # one worker for the final validation's export and metric pools: 2 validation cases need no more
    pipe.env.update(nnUNet_def_n_proc="1")
    _run([exe("sam3d-nnunet"), "plan_and_preprocess", "-d", pipe.id, "-pl", "SAM3DPlanner", "-c", "3d_fullres",
          "--sam-variant", "tiny", "--sam-checkpoint", pipe.sam_ckpt, "-npfp", "1", "-np", "1", "--no_pbar"], pipe.env)
    return pipe


@pytest.fixture(scope="module")
def killed_training(planned):
    """The kill / resume protocol; returns what was observed (the test asserts on it)."""
    pipe = planned
    rng = random.Random(SEED)
    fold = pipe.results(TRAINER) / "fold_0"
    cmd = [str(pipe.id), "3d_fullres", "0", "-tr", TRAINER, "-p", "SAM3DPlans", "-device", "cpu"]
    obs = {"kills": []}

    # 1. SIGKILL at a seeded random moment after the first checkpoint exists
    delay = rng.uniform(0.0, 4.0)
    with open(pipe.root / "train_1.log", "w") as log:
        proc = subprocess.Popen([exe("nnUNetv2_train"), *cmd], env=pipe.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            _wait_for(proc, lambda: (fold / "checkpoint_latest.pth").exists(), "checkpoint_latest.pth", 600)
            time.sleep(delay)
        finally:
            _kill_group(proc)
    obs["kills"].append({"fault": "SIGKILL at a seeded random moment",
                         "how": f"SIGKILL {delay:.2f} s after the first checkpoint_latest.pth appeared",
                         "checkpoints": _checkpoints_on_disk(fold), "temporaries": _temporaries(fold)})

    # 2. --c, killed from inside torch.save of the first checkpoint it writes, a random share of it written
    share = rng.uniform(0.05, 0.95)
    env = dict(pipe.env, SAM3D_FAULT_SAVE_INDEX="1", SAM3D_FAULT_SHARE=f"{share:.4f}")
    status, output = _run_until_it_dies([sys.executable, "-c", DYING_TRAIN, *cmd, "--c"], env,
                                        pipe.root / "train_2.log")
    assert status == -signal.SIGKILL, f"the injected fault did not fire ({status}):\n{output[-3000:]}"
    fault_line = re.search(r"FAULT: .*", output).group(0)
    temps = _temporaries(fold)
    partial_ok = []
    for t in temps:  # the half-written temporary is really unreadable: the atomic rename is what protects us
        from sam3d_nnunet.validation import CheckpointError, load_checkpoint_safely
        try:
            load_checkpoint_safely(fold / t)
            partial_ok.append(t)
        except CheckpointError:
            pass
    obs["kills"].append({"fault": "SIGKILL inside torch.save of a checkpoint (partial temporary file)",
                         "how": f"{share:.0%} of the bytes written: {fault_line}",
                         "checkpoints": _checkpoints_on_disk(fold), "temporaries": temps,
                         "readable_temporaries": partial_ok})

    # 3. --c to the end
    logs_before = set(fold.glob("training_log_*.txt"))
    time.sleep(1.1)  # nnU-Net names its log files by the second
    pipe.train(TRAINER, "--c")
    obs["final_log"] = (set(fold.glob("training_log_*.txt")) - logs_before).pop().read_text()
    obs["resumed_from"] = obs["kills"][-1]["checkpoints"].get("checkpoint_latest.pth", 0)
    obs["fold"] = fold
    return obs


@pytest.mark.slow
def test_training_killed_twice_resumes_and_finishes(killed_training):
    from sam3d_nnunet.validation import load_checkpoint_safely
    obs = killed_training
    fold: Path = obs["fold"]
    first, second = obs["kills"]
    # after the random kill: every checkpoint on disk loaded, latest is from a finished epoch
    assert 1 <= first["checkpoints"]["checkpoint_latest.pth"] < N_EPOCHS, first
    assert "checkpoint_final.pth" not in first["checkpoints"], "killed too late: the run had already finished"
    # after the kill inside torch.save: the half-written temporary exists and is unreadable, the final names
    # still hold complete checkpoints (all loaded above)
    assert second["temporaries"], f"the fault did not leave a half-written temporary: {second}"
    assert not second["readable_temporaries"], "the temporary was complete: the kill was not mid-write"
    assert second["checkpoints"].get("checkpoint_latest.pth", 0) >= first["checkpoints"]["checkpoint_latest.pth"]
    # the finished run
    final = load_checkpoint_safely(fold / "checkpoint_final.pth")
    assert final["current_epoch"] == N_EPOCHS
    assert len(final["logging"]["epoch_end_timestamps"]) == N_EPOCHS
    assert len(final["logging"]["train_losses"]) == N_EPOCHS
    epochs_run = [int(e) for e in re.findall(r": Epoch (\d+)\s*$", obs["final_log"], re.M)]
    assert epochs_run == list(range(obs["resumed_from"], N_EPOCHS)), \
        f"resumed where the checkpoint left off ({obs['resumed_from']}), ran {epochs_run}"
    assert not (fold / "checkpoint_latest.pth").exists()
    assert not _temporaries(fold), "the resumed run removed the dead run's temporaries"
    assert _checkpoints_on_disk(fold)["checkpoint_final.pth"] == N_EPOCHS
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert {"1", "2"} <= set(summary["mean"])
    assert len(assert_complete_images(fold / "validation")) == 2
    for k in obs["kills"]:
        record(SUITE, "training", k["fault"], "resumed with --c, finished 5/5 epochs, every checkpoint readable",
               detail=k["how"])


# ================================================================================================ prediction
@pytest.fixture(scope="module")
def prediction_inputs(killed_training, planned, tmp_path_factory):
    """(model folder, input folder with 6 cases, labels folder, predict arguments)."""
    root = tmp_path_factory.mktemp("reliability_predict")
    raw = planned.root / "raw" / planned.name
    inp = root / "in"
    inp.mkdir()
    for f in sorted((raw / "imagesTr").glob("*_0000.nii.gz")):
        os.symlink(f, inp / f.name)
    model = planned.results(TRAINER)
    assert (model / "fold_0" / "checkpoint_final.pth").is_file()
    args = ["-i", inp, "-m", model, "-f", "0", "--simulate-clicks", raw / "labelsTr", "--n-clicks", "2",
            "--seed", "5", "-device", "cpu", "--disable_progress_bar"]
    return {"model": model, "inp": inp, "labels": raw / "labelsTr", "args": args, "root": root,
            "cases": sorted(f.name[:-len("_0000.nii.gz")] for f in inp.iterdir())}


def _predict_cmd(args, out):
    return [exe("sam3d-nnunet"), "predict", *[str(a) for a in args], "-o", str(out)]


def _arrays(folder: Path, cases) -> dict:
    import SimpleITK as sitk
    return {c: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{c}.nii.gz"))) for c in cases}


@pytest.fixture(scope="module")
def reference_prediction(prediction_inputs):
    """An uninterrupted run, in this process (the command-line runs below must agree with it byte for byte)."""
    import torch

    from sam3d_nnunet.commands.predict import predict_folder
    from sam3d_nnunet.inference.session import load_predictor
    torch.set_num_threads(os.cpu_count() or 1)  # as the command does
    out = prediction_inputs["root"] / "reference"
    predictor = load_predictor(prediction_inputs["model"], (0,), device="cpu")
    predict_folder(predictor, str(prediction_inputs["inp"]), str(out), simulate_labels=str(prediction_inputs["labels"]),
                   n_clicks=2, seed=5, progress=False)
    return out, _arrays(out, prediction_inputs["cases"])


@pytest.mark.slow
def test_prediction_killed_midway_leaves_no_partial_file_and_rerun_completes(prediction_inputs,
                                                                             reference_prediction):
    rng = random.Random(SEED + 1)
    cases = prediction_inputs["cases"]
    out = prediction_inputs["root"] / "killed"
    cmd = _predict_cmd(prediction_inputs["args"], out)
    done = lambda: [c for c in cases if (out / f"{c}.nii.gz").exists()]  # noqa: E731

    # 1. SIGKILL at a seeded random moment after the first case is out
    delay = rng.uniform(0.0, 1.0)
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        _wait_for(proc, lambda: bool(done()), "the first output", 600)
        time.sleep(delay)
    finally:
        _kill_group(proc)
    n_first = len(done())
    assert_complete_images(out)  # nothing partial under a final name
    record(SUITE, "prediction", "SIGKILL at a seeded random moment", "rerun completed, masks identical",
           detail=f"{delay:.2f} s after the first output; {n_first}/{len(cases)} cases were out")

    # 2. SIGKILL inside the image writer, half the file written, on a seeded case of the rerun
    remaining = len(cases) - n_first
    if remaining > 0:
        k = rng.randint(1, remaining)
        status, output = _run_until_it_dies([sys.executable, "-c", DYING_PREDICT, *cmd[1:]],
                                            cli_env(SAM3D_FAULT_CASE_INDEX=k), out.parent / "predict_fault.log")
        assert status == -signal.SIGKILL, f"the injected fault did not fire ({status}): {output[-2000:]}"
        assert_complete_images(out)
        hidden = [f.name for f in out.iterdir() if f.name.startswith(".")]
        assert hidden, "the half-written file should sit under a hidden temporary name"
        assert not any(image_is_complete(out / h) for h in hidden if h.endswith(".nii.gz"))
        record(SUITE, "prediction", "SIGKILL inside the segmentation writer (half a file written)",
               "rerun completed, masks identical", detail=f"case {k} of the {remaining} left; {len(done())} out")

    # 3. the rerun skips the finished cases and completes; nothing lost, nothing different
    p = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert sorted(done()) == cases
    # what the dead runs left is only ever under hidden temporary names (removed by a later run once an hour old)
    assert all(re.fullmatch(r"\.[^.]+\.[0-9a-f]{10}\.tmp\.nii\.gz", f.name) for f in out.iterdir()
               if f.name.startswith(".")), sorted(f.name for f in out.iterdir())
    assert_complete_images(out)
    ref_dir, ref = reference_prediction
    got = _arrays(out, cases)
    for c in cases:
        assert np.array_equal(got[c], ref[c]), f"{c}: the resumed prediction differs from an uninterrupted one"
    prompts = json.loads((out / "prompts.json").read_text())
    assert prompts["cases"] == json.loads((ref_dir / "prompts.json").read_text())["cases"]


@pytest.mark.slow
def test_two_predictions_into_one_folder_at_once(prediction_inputs, reference_prediction):
    out = prediction_inputs["root"] / "concurrent"
    cmd = _predict_cmd(prediction_inputs["args"], out)
    procs = [subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) for _ in range(2)]
    results = []
    try:
        for proc in procs:
            results.append(proc.communicate(timeout=600))
    finally:
        for proc in procs:
            _kill_group(proc)
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode == 0, err[-3000:]
    cases = prediction_inputs["cases"]
    assert_complete_images(out)
    ref_dir, ref = reference_prediction
    got = _arrays(out, cases)
    for c in cases:
        assert np.array_equal(got[c], ref[c]), f"{c}: concurrent writers changed the output"
    assert json.loads((out / "prompts.json").read_text())["cases"] == \
        json.loads((ref_dir / "prompts.json").read_text())["cases"]
    assert not [f.name for f in out.iterdir() if f.name.startswith(".")]
    record(SUITE, "prediction", "two predict processes writing one output folder at the same time",
           "both succeeded, outputs identical to a single run")


def test_fresh_temporary_of_another_writer_is_not_removed(tmp_path):
    """A rerun removes temporaries a dead run left behind, but not one another live process is writing."""
    from test_predict import _oracle_predictor

    from reliability_helpers import write_image
    from sam3d_nnunet.commands.predict import predict_folder
    img = np.full((24, 24, 24), 10, np.int16)
    img[8:16, 8:16, 8:16] = 100
    write_image(img, tmp_path / "in" / "a_0000.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    live = out / ".a.0123456789.tmp.nii.gz"  # the name export_prediction_atomic gives, being written right now
    live.write_bytes(b"being written by another process")
    stale = out / ".a.abcdef0123.tmp.nii.gz"
    stale.write_bytes(b"left by a killed run")
    old = time.time() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    predict_folder(_oracle_predictor(), str(tmp_path / "in"), str(out), auto=True, progress=False)
    assert (out / "a.nii.gz").is_file()
    assert live.exists(), "a live writer's temporary file was deleted (its rename would fail)"
    assert not stale.exists(), "a dead run's temporary was kept"
    record(SUITE, "prediction", "a second writer's fresh temporary file in the output folder",
           "left alone; a day-old temporary removed")


@pytest.mark.slow
def test_same_inputs_clicks_and_seed_give_identical_masks(prediction_inputs, reference_prediction, tmp_path):
    """CPU determinism, same options: the in-process reference, a second in-process run and the command line (the
    resumed and the concurrent runs above compare to the same reference) agree byte for byte; two runs with
    ``--save_probabilities`` agree byte for byte, masks and probabilities. (With and without
    ``--save_probabilities`` masks may differ at near-ties: nnU-Net's export then takes the mask from the softmax
    of the merged probabilities; README "Guarantees".)"""
    import torch

    from sam3d_nnunet.commands.predict import predict_folder
    from sam3d_nnunet.inference.session import load_predictor
    torch.set_num_threads(os.cpu_count() or 1)  # as the command does
    predictor = load_predictor(prediction_inputs["model"], (0,), device="cpu")
    ref_dir, ref = reference_prediction
    cases = prediction_inputs["cases"]

    def run(name, save_probabilities):
        out = tmp_path / name
        predict_folder(predictor, str(prediction_inputs["inp"]), str(out), simulate_labels=str(
            prediction_inputs["labels"]), n_clicks=2, seed=5, save_probabilities=save_probabilities, progress=False)
        return out, _arrays(out, cases)

    _, got = run("again", False)
    for c in cases:
        assert got[c].dtype == ref[c].dtype and got[c].tobytes() == ref[c].tobytes(), f"second run differs: {c}"
    (a_dir, a), (b_dir, b) = run("prob_a", True), run("prob_b", True)
    for c in cases:
        assert a[c].tobytes() == b[c].tobytes(), c
        assert np.load(a_dir / f"{c}.npz")["probabilities"].tobytes() == \
            np.load(b_dir / f"{c}.npz")["probabilities"].tobytes(), c
    record(SUITE, "prediction", "the same inputs, clicks and seed predicted 7 times (3 in-process, 4 command "
           "line: resumed and concurrent runs)", "byte-identical masks (and probabilities)")
