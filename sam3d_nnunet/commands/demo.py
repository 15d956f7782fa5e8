"""``sam3d-nnunet demo``: the whole pipeline on synthetic CT phantoms, in a few minutes on a CPU.

Steps (each says what it does; a rerun in the same ``--workdir`` skips or resumes finished steps):

1. generate deterministic synthetic CT-like phantoms with ``sam3d_nnunet.phantoms`` as an nnU-Net raw dataset
   (``Dataset990_SAM3DDemo``): two organs (label 1) side by side, each holding a lesion, the two lesions alike (both
   bright or both dark); one of them, drawn at random per case, is the tumour (label 2), as a target lesion next to
   a look-alike one. No automatic model can know which lesion is meant; one click on it says so, which is what a
   promptable model is for;
2. write a SAM-format checkpoint of the small ``tiny`` encoder with RANDOM weights
   (``sam3d_nnunet.model.write_random_sam_checkpoint``): the real SAM weights cannot be downloaded offline, so
   the demo shows the pipeline working, not what pretrained SAM features bring;
3. fingerprint, plans and preprocessing for SAM3D (``sam3d-nnunet plan_and_preprocess -pl SAM3DPlanner
   --sam-variant tiny``);
4. plans and preprocessing for nnU-Net's baseline with nnU-Net's default planner on the same fingerprint
   (``nnUNetv2_plan_and_preprocess -c 3d_fullres``);
5. train SAM3D on fold 0 (``nnUNetv2_train ... -tr nnUNetTrainerSAM3D_budget_noDA -p SAM3DPlans``); its final
   validation writes the automatic predictions to ``fold_0/validation`` and the 1-click ones to
   ``fold_0/validation_clicks1_seed0`` (a fold validated by an older version is validated again);
6. train nnU-Net's baseline on the same fold 0 (``nnUNetv2_train ... -tr nnUNetTrainer_budget_noDA -p nnUNetPlans``);
   both trainers are short-budget variants (``sam3d_nnunet.benchmark.budget_trainers``) at nnU-Net's batch sizes,
   both without data augmentation (nnU-Net's ``nnUNetTrainerNoDA``: on these homogeneous phantoms and a budget of
   minutes it only slowed learning down, BENCHMARKS.md, "Demo on synthetic phantoms"). SAM3D gets 1000 iterations,
   nnU-Net 600: a SAM3D iteration costs about a third of nnU-Net's on a CPU, so SAM3D still trains for less
   wall time;
7. the benchmark (``sam3d-nnunet benchmark``): random clicks, iterative correction, automatic mode vs nnU-Net,
   ``report.md`` with plots.

Everything nnU-Net does runs as a subprocess with ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results``
under the work folder and ``nnUNet_extTrainer`` pointing at the SAM3D trainers and the short-budget trainers. With a GPU
(``--device auto`` and ``torch.cuda.is_available()``) training and prediction use it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional

from sam3d_nnunet.atomic import atomic_path, save_json_atomic

PROG = "sam3d-nnunet demo"
DATASET_ID = 990
DATASET_NAME = "SAM3DDemo"
SAM_TRAINER = "nnUNetTrainerSAM3D_budget_noDA"
BASELINE_TRAINER = "nnUNetTrainer_budget_noDA"


@dataclass(frozen=True)
class DemoBudget:
    """What the demo generates and how long it trains (the full demo, or the reduced one of the tests)."""

    n_cases: int = 20
    shape: tuple = (32, 32, 32)
    spacing: tuple = (1.0, 1.0, 1.0)
    phantom_seed: int = 0
    sam_epochs: int = 20  # 1000 iterations in about 4 minutes, less than nnU-Net's 600 take
    sam_iterations: int = 50
    sam_lr: float = 3e-3
    sam_max_clicks: int = 3  # training clicks of each polarity (the trainer's default is 10)
    nnunet_epochs: int = 12
    nnunet_iterations: int = 50
    clicks: tuple = (1, 3, 10)
    iterative: int = 5
    baseline_timing_cases: int = 2
    lookalike_lesions: bool = True  # phantoms where a click decides which lesion is the tumour


FULL = DemoBudget()
FAST = DemoBudget(n_cases=10, shape=(32, 32, 32), sam_epochs=1, sam_iterations=3, nnunet_epochs=1,
                  nnunet_iterations=3, clicks=(1, 3), iterative=3, baseline_timing_cases=1)


class DemoError(Exception):
    pass


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("demo", help="the whole pipeline on synthetic CT phantoms (minutes on a CPU)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="./sam3d_demo",
                        help="work folder (nnUNet_raw/preprocessed/results, logs, report); default ./sam3d_demo")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: cuda if torch.cuda.is_available(), else cpu (default)")
    # reduced budget for tests (also SAM3D_DEMO_FAST=1); not a user option
    parser.add_argument("--fast", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    fast = bool(args.fast or os.environ.get("SAM3D_DEMO_FAST", "").strip() not in ("", "0"))
    try:
        run_demo(args.workdir, device=args.device, budget=FAST if fast else FULL)
    except DemoError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------------ helpers
def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise DemoError(f"--device must be auto, cpu or cuda, got {device!r}")
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DemoError("--device cuda but torch.cuda.is_available() is False")
    return device


def _exe(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


class _Demo:
    def __init__(self, workdir: str, device: str, budget: DemoBudget, out: Callable[[str], None]):
        self.root = Path(workdir).expanduser().resolve()
        self.device = device
        self.budget = budget
        self.out = out
        self.name = f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
        self.raw = self.root / "nnUNet_raw"
        self.pre = self.root / "nnUNet_preprocessed"
        self.res = self.root / "nnUNet_results"
        self.logs = self.root / "logs"
        self.ext = self.root / "ext_trainers"
        self.sam_ckpt = self.root / "sam_tiny_random_weights.pth"
        self.n_steps = 7

    # -------------------------------------------------------------- environment
    def env(self) -> dict:
        from sam3d_nnunet.commands.ext_trainer_dir import ext_trainer_dir
        env = dict(os.environ)
        env.update(nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.pre), nnUNet_results=str(self.res),
                   nnUNet_extTrainer=os.pathsep.join([ext_trainer_dir(), str(self.ext)]),
                   nnUNet_compile="false", PYTHONUNBUFFERED="1",
                   SAM3D_BUDGET_SAM_EPOCHS=str(self.budget.sam_epochs),
                   SAM3D_BUDGET_SAM_ITERS=str(self.budget.sam_iterations),
                   SAM3D_BUDGET_SAM_LR=str(self.budget.sam_lr),
                   SAM3D_BUDGET_SAM_MAX_CLICKS=str(self.budget.sam_max_clicks),
                   SAM3D_BUDGET_NNUNET_EPOCHS=str(self.budget.nnunet_epochs),
                   SAM3D_BUDGET_NNUNET_ITERS=str(self.budget.nnunet_iterations))
        env.setdefault("nnUNet_def_n_proc", "2")
        env.setdefault("nnUNet_n_proc_DA", "2")
        return env

    def step(self, i: int, text: str) -> float:
        self.out(f"[{i}/{self.n_steps}] {text}")
        return time.time()

    def done(self, t0: float, note: str = "done") -> None:
        self.out(f"      {note} ({time.time() - t0:.0f} s)")

    def run_logged(self, cmd: List[str], log_name: str, filter_fn: Optional[Callable[[str], Optional[str]]] = None,
                   passthrough: bool = False) -> None:
        """Run ``cmd`` with the demo's environment; the full output goes to logs/<log_name>, a condensed view
        (``filter_fn``) to the console. Raises DemoError with the log's tail on failure."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / log_name
        self.out(f"      $ {' '.join(Path(c).name if i == 0 else str(c) for i, c in enumerate(cmd))}")
        self.out(f"      (full log: {log_path})")
        if passthrough:
            with open(log_path, "w") as log:
                log.write(" ".join(map(str, cmd)) + "\n")
            proc = subprocess.run([str(c) for c in cmd], env=self.env())
            if proc.returncode != 0:
                raise DemoError(f"{Path(cmd[0]).name} failed with exit code {proc.returncode}")
            return
        with open(log_path, "w") as log:
            log.write(" ".join(map(str, cmd)) + "\n")
            proc = subprocess.Popen([str(c) for c in cmd], env=self.env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1)
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if filter_fn is not None:
                    shown = filter_fn(line.rstrip("\n"))
                    if shown:
                        self.out(f"      {shown}")
            rc = proc.wait()
        if rc != 0:
            tail = "".join(open(log_path).readlines()[-30:])
            raise DemoError(f"{Path(cmd[0]).name} failed with exit code {rc}; last lines of {log_path}:\n{tail}")

    # -------------------------------------------------------------- config record
    def check_config(self) -> None:
        record = {"budget": json.loads(json.dumps(asdict(self.budget))), "dataset": self.name}
        path = self.root / "demo_config.json"
        if path.is_file():
            old = json.loads(path.read_text())
            if old != record:
                raise DemoError(f"{self.root} was made by a demo with other settings ({path}); use another "
                                f"--workdir or delete this one")
        else:
            save_json_atomic(record, path, indent=1)
        from sam3d_nnunet.benchmark.budget_trainers import write_ext_trainer_shim
        write_ext_trainer_shim(self.ext)

    # -------------------------------------------------------------- steps
    def generate(self) -> None:
        b = self.budget
        t0 = self.step(1, f"Generating {b.n_cases} synthetic CT phantoms (two organs with a lesion each, the lesions "
                          f"alike, one of them the tumour: a click says which; "
                          f"{'x'.join(map(str, b.shape))} voxels, seed {b.phantom_seed}) as nnU-Net raw dataset "
                          f"{self.name} ...")
        folder = self.raw / self.name
        dj = folder / "dataset.json"
        if dj.is_file():
            meta = json.loads(dj.read_text())
            files_ok = all((folder / "imagesTr" / f"{DATASET_NAME.lower()}_{i:03d}_0000.nii.gz").is_file() and
                           (folder / "labelsTr" / f"{DATASET_NAME.lower()}_{i:03d}.nii.gz").is_file()
                           for i in range(b.n_cases))
            if meta.get("numTraining") == b.n_cases and meta.get("phantom_shape") == list(b.shape) and files_ok:
                self.done(t0, f"already there: {folder}")
                return
        from sam3d_nnunet.phantoms import generate_phantom_dataset
        generate_phantom_dataset(self.raw, DATASET_ID, DATASET_NAME, n_cases=b.n_cases, shape=b.shape,
                                 seed=b.phantom_seed, spacing=b.spacing, lookalike_lesions=b.lookalike_lesions)
        self.done(t0, f"wrote {folder}")

    def sam_checkpoint(self) -> None:
        t0 = self.step(2, "Writing a SAM-format checkpoint of the small 'tiny' encoder with RANDOM weights ...")
        self.out("      NOTE: the real SAM weights (sam_vit_b_01ec64.pth, ...) are not available offline, so this demo "
                 "starts the ViT from random weights: it shows the pipeline, not SAM's pretrained features. "
                 "For real use plan with --sam-variant vit_b --sam-checkpoint sam_vit_b_01ec64.pth.")
        if self.sam_ckpt.is_file():
            self.done(t0, f"already there: {self.sam_ckpt}")
            return
        from sam3d_nnunet.model import write_random_sam_checkpoint
        with atomic_path(self.sam_ckpt) as tmp:
            write_random_sam_checkpoint("tiny", tmp, seed=0)
        self.done(t0, f"wrote {self.sam_ckpt}")

    def _preprocessed_complete(self, plans: str) -> bool:
        folder = self.pre / self.name
        data = folder / f"{plans}_3d_fullres"
        if not (folder / f"{plans}.json").is_file() or not data.is_dir():
            return False
        return len(list(data.glob("*.pkl"))) == self.budget.n_cases and \
            len(list((folder / "gt_segmentations").glob("*.nii.gz"))) == self.budget.n_cases

    def plan_sam(self) -> None:
        t0 = self.step(3, "Planning and preprocessing for SAM3D (nnU-Net fingerprint, SAM3DPlanner, tiny variant) ...")
        if self._preprocessed_complete("SAM3DPlans"):
            self.done(t0, "already preprocessed (SAM3DPlans)")
            return
        self.run_logged([_exe("sam3d-nnunet"), "plan_and_preprocess", "-d", str(DATASET_ID), "-pl", "SAM3DPlanner",
                         "-c", "3d_fullres", "--sam-variant", "tiny", "--sam-checkpoint", str(self.sam_ckpt),
                         "--click-maps",
                         "-npfp", "2", "-np", "2", "--no_pbar"], "3_plan_sam3d.log", _plan_filter)
        self.done(t0)

    def plan_baseline(self) -> None:
        t0 = self.step(4, "Planning and preprocessing for the nnU-Net baseline (nnU-Net's default planner, same "
                          "fingerprint) ...")
        if self._preprocessed_complete("nnUNetPlans"):
            self.done(t0, "already preprocessed (nnUNetPlans)")
            return
        self.run_logged([_exe("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres",
                         "-npfp", "2", "-np", "2", "--no_pbar"], "4_plan_nnunet.log", _plan_filter)
        self.done(t0)

    def fold_folder(self, trainer: str, plans: str) -> Path:
        return self.res / self.name / f"{trainer}__{plans}__3d_fullres" / "fold_0"

    def train(self, i: int, what: str, trainer: str, plans: str, epochs: int, iterations: int) -> None:
        t0 = self.step(i, f"Training {what} ({trainer}, {epochs} epochs x {iterations} iterations) on fold 0, "
                          f"device {self.device} ...")
        fold = self.fold_folder(trainer, plans)
        if (fold / "checkpoint_final.pth").is_file() and _validated(fold, prompted=trainer == SAM_TRAINER):
            self.done(t0, f"already trained and validated: {fold}")
            return
        if (fold / "checkpoint_latest.pth").is_file() or (fold / "checkpoint_final.pth").is_file():
            self.out("      resuming from the last checkpoint (--c)")
        self.run_logged([_exe("nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-tr", trainer, "-p", plans,
                         "-device", self.device, "--c"], f"{i}_train_{trainer}.log", _TrainFilter(epochs))
        self.done(t0)

    def benchmark(self) -> Path:
        b = self.budget
        t0 = self.step(7, "Benchmark: SAM3D with 0 / " + " / ".join(map(str, b.clicks)) +
                          f" random clicks and {b.iterative} iterative correction clicks per class vs nnU-Net, "
                          f"fold 0 ...")
        out = self.res / self.name / "benchmark"
        cmd = [_exe("sam3d-nnunet"), "benchmark", "-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "0",
               "--sam", f"{SAM_TRAINER}:SAM3DPlans", "--baseline", f"{BASELINE_TRAINER}:nnUNetPlans",
               "--clicks", *map(str, b.clicks), "--iterative", str(b.iterative), "--seed", "0",
               "-o", str(out), "-device", self.device, "--baseline-timing-cases", str(b.baseline_timing_cases)]
        self.run_logged(cmd, "7_benchmark.log", passthrough=True)
        self.done(t0)
        return out / "report.md"

    def run(self) -> Path:
        t_start = time.time()
        b = self.budget
        self.out(f"sam3d-nnunet demo: work folder {self.root}, device {self.device}")
        self.check_config()
        self.generate()
        self.sam_checkpoint()
        self.plan_sam()
        self.plan_baseline()
        self.train(5, "SAM3D", SAM_TRAINER, "SAM3DPlans", b.sam_epochs, b.sam_iterations)
        self.train(6, "the nnU-Net baseline", BASELINE_TRAINER, "nnUNetPlans", b.nnunet_epochs, b.nnunet_iterations)
        report = self.benchmark()
        if not report.is_file():
            raise DemoError(f"the benchmark did not write {report}")
        self.out("")
        self.out(_main_table(report.read_text()))
        self.out("")
        self.out(f"Done in {time.time() - t_start:.0f} s. Report: {report}")
        self.out(f"Plots and results.json: {report.parent}")
        self.out("The models are tiny and trained for a few minutes from random SAM weights: the numbers show the "
                 "pipeline working, not the method's accuracy.")
        return report


def _validated(fold: Path, prompted: bool) -> bool:
    """The fold's validation is complete in the current layout: automatic ``validation/summary.json`` (not an
    older version's prompted ``validation/``) and, for SAM3D, a prompted ``validation_clicks*_seed*/summary.json``.
    Otherwise ``nnUNetv2_train --c`` runs (with checkpoint_final.pth it only validates again)."""
    from sam3d_nnunet.evaluation.validation_folders import is_old_layout, prompted_folders
    if not (fold / "validation" / "summary.json").is_file() or is_old_layout(str(fold)):
        return False
    return not prompted or any((fold / name / "summary.json").is_file() for name, _, _ in prompted_folders(str(fold)))


def _plan_filter(line: str) -> Optional[str]:
    if re.search(r"Fingerprint extraction|Experiment planning|Preprocessing dataset|Configuration: |"
                 r"WARNING: SAM3DPlanner|Error|Traceback", line):
        return line.strip()[:160]
    return None


class _TrainFilter:
    """Condenses nnU-Net's training log to one line per epoch (plus validation and errors)."""

    def __init__(self, epochs: int):
        self.epochs = epochs
        self.epoch: Optional[int] = None
        self.parts: List[str] = []

    def __call__(self, line: str) -> Optional[str]:
        text = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ", "", line).strip()
        m = re.fullmatch(r"Epoch (\d+)", text)
        if m:
            self.epoch = int(m.group(1))
            self.parts = []
            return None
        for key in ("train_loss", "val_loss"):
            if text.startswith(key):
                self.parts.append(text)
                return None
        if text.startswith("Pseudo dice"):
            values = re.findall(r"[-+]?\d*\.\d+|\d+", text.replace("np.float32", ""))
            self.parts.append("pseudo Dice [" + ", ".join(values) + "]")
            return None
        if text.startswith("Epoch time") and self.epoch is not None:
            return f"epoch {self.epoch + 1}/{self.epochs}: " + ", ".join(self.parts + [text.lower()])
        if text.startswith(("Mean Validation Dice", "predicting", "Validation complete", "Prompted validation complete",
                            "old layout:")) or "Traceback" in text or "Error" in text:
            return text[:160]
        if text.startswith("WARNING: Cannot continue training"):
            return "no checkpoint to resume from: starting a new training"
        return None


def _main_table(report_text: str) -> str:
    """The first table of report.md (the paper's format), for the console."""
    lines = report_text.splitlines()
    out, inside = [], False
    for line in lines:
        if line.startswith("## Dice / NSD"):
            out.append(line.lstrip("# "))
            inside = True
            continue
        if inside:
            if line.startswith("|") or (not line.strip() and len(out) < 3):
                out.append(line)
            elif out and out[-1].startswith("|"):
                break
    return "\n".join(out)


def run_demo(workdir: str, device: str = "auto", budget: DemoBudget = FULL,
             out: Callable[[str], None] = lambda s: print(s, flush=True)) -> Path:
    """Run (or resume) the demo in ``workdir``; returns the path of report.md."""
    return _Demo(workdir, resolve_device(device), budget, out).run()


__all__ = ["DemoBudget", "DemoError", "FAST", "FULL", "run_demo", "resolve_device"]
