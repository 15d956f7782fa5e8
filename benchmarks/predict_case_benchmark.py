"""Whole-case prediction time and peak memory: ``sam3d-nnunet predict`` against ``nnUNetv2_predict`` on the
same real CT case (../shared/data/inference_ct/totalseg_example_ct.nii.gz, 3 mm, 122x101x112).

    python benchmarks/predict_case_benchmark.py [--variant vit_b] [--workdir /tmp/sam3d_predict_bench]

Both models are planned by their own planner on the same one-image dataset (the CT, with a body mask as
its label, repeated so nnU-Net's planning has five cases) and initialised without training: prediction
time does not depend on the weights. Each command runs as a subprocess; its peak memory is the child's
ru_maxrss. Writes ``benchmarks/results/predict-case-<host>.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CT = HERE.parent.parent / "shared" / "data" / "inference_ct" / "totalseg_example_ct.nii.gz"
DATASET_ID = 990
DATASET = f"Dataset{DATASET_ID}_CTBench"


def run(cmd: list[str], env: dict) -> dict:
    """Run a command as a child; wall time and the child's peak resident memory."""
    probe = ("import resource,subprocess,sys,json,time;t=time.perf_counter();"
             "r=subprocess.run(sys.argv[1:]);"
             "print('RUN '+json.dumps({'rc':r.returncode,'seconds':time.perf_counter()-t,"
             "'peak_rss_gb':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1e6}))")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], env=env, capture_output=True, text=True)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RUN ")), None)
    if line is None or json.loads(line[4:])["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(line[4:])


def make_dataset(raw: Path) -> None:
    import SimpleITK as sitk
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    folder = raw / DATASET
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    image = sitk.ReadImage(str(CT))
    body = sitk.Cast(sitk.BinaryThreshold(image, -300, 5000, 1, 0), sitk.sitkUInt8)
    for i in range(5):
        sitk.WriteImage(image, str(folder / "imagesTr" / f"ct_{i:03d}_0000.nii.gz"))
        sitk.WriteImage(body, str(folder / "labelsTr" / f"ct_{i:03d}.nii.gz"))
    generate_dataset_json(str(folder), {0: "CT"}, {"background": 0, "body": 1}, 5, ".nii.gz", dataset_name=DATASET)


def initialise_model(trainer_name: str, plans: str, env: dict) -> None:
    """Build the trainer as nnUNetv2_train would and save an untrained checkpoint_final.pth in fold_0."""
    code = f"""
import torch
from nnunetv2.run.run_training import get_trainer_from_args
trainer = get_trainer_from_args('{DATASET_ID}', '3d_fullres', 0, '{trainer_name}', '{plans}', device=torch.device('cpu'))
from batchgenerators.utilities.file_and_folder_operations import save_json, join
trainer.initialize()
trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets the test-time mirroring axes, as training would
save_json(trainer.plans_manager.plans, join(trainer.output_folder_base, 'plans.json'), sort_keys=False)
save_json(trainer.dataset_json, join(trainer.output_folder_base, 'dataset.json'), sort_keys=False)
trainer.save_checkpoint(join(trainer.output_folder, 'checkpoint_final.pth'))
"""
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="vit_b")
    parser.add_argument("--workdir", default="/tmp/sam3d_predict_bench")
    args = parser.parse_args()
    if not CT.is_file():
        print(f"skipped: {CT} is absent")
        return 0
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "pre"),
               nnUNet_results=str(work / "results"), nnUNet_def_n_proc="2", nnUNet_n_proc_DA="2")
    # the commands of the environment this script runs in, activated or not
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["nnUNet_extTrainer"] = subprocess.run(["sam3d-nnunet", "ext-trainer-dir"], capture_output=True, text=True,
                                              check=True, env=env).stdout.strip()
    make_dataset(work / "raw")
    subprocess.run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "2"],
                   env=env, check=True, capture_output=True)
    subprocess.run(["sam3d-nnunet", "plan_and_preprocess", "-d", str(DATASET_ID), "-pl", "SAM3DPlanner", "-c",
                    "3d_fullres", "--sam-variant", args.variant, "-np", "2"], env=env, check=True, capture_output=True)
    initialise_model("nnUNetTrainer", "nnUNetPlans", env)
    initialise_model("nnUNetTrainerSAM3D", "SAM3DPlans", env)
    plans = json.loads((work / "pre" / DATASET / "SAM3DPlans.json").read_text())
    baseline_plans = json.loads((work / "pre" / DATASET / "nnUNetPlans.json").read_text())

    inp = work / "input"
    inp.mkdir()
    shutil.copy(CT, inp / "ct_000_0000.nii.gz")
    clicks = work / "clicks.json"
    # one positive click in the middle of the volume (voxel indices x, y, z of the raw image)
    import SimpleITK as sitk

    size = sitk.ReadImage(str(CT)).GetSize()
    clicks.write_text(json.dumps({"coordinate_system": "voxel", "cases": {
        "ct_000": {"1": [{"point": [s // 2 for s in size], "positive": True}]}}}))
    common = ["-i", str(inp), "-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "0", "-device", "cpu"]
    cases = {
        "nnunet_predict_tta": ["nnUNetv2_predict", *common, "-o", str(work / "o1"), "-npp", "1", "-nps", "1"],
        "nnunet_predict_no_tta": ["nnUNetv2_predict", *common, "-o", str(work / "o2"), "--disable_tta", "-npp", "1",
                                  "-nps", "1"],
        "sam3d_predict_one_click": ["sam3d-nnunet", "predict", *common, "-o", str(work / "o3"), "-tr",
                                    "nnUNetTrainerSAM3D", "-p", "SAM3DPlans", "--clicks", str(clicks)],
        "sam3d_predict_auto": ["sam3d-nnunet", "predict", *common, "-o", str(work / "o4"), "-tr",
                               "nnUNetTrainerSAM3D", "-p", "SAM3DPlans", "--auto"],
    }
    results = {}
    for name, cmd in cases.items():
        results[name] = run(cmd, env)
        print(f"{name:<28} {results[name]['seconds']:8.1f} s   peak {results[name]['peak_rss_gb']:5.2f} GB", flush=True)
    out = {"machine": {"host": platform.node(), "cpu_count": os.cpu_count()}, "variant": args.variant,
           "sam3d_patch": plans["configurations"]["3d_fullres"]["patch_size"],
           "sam3d_spacing": plans["configurations"]["3d_fullres"]["spacing"],
           "nnunet_patch": baseline_plans["configurations"]["3d_fullres"]["patch_size"],
           "nnunet_spacing": baseline_plans["configurations"]["3d_fullres"]["spacing"], "results": results}
    target = HERE / "results" / f"predict-case-{platform.node()}.json"
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "results"}))
    print(f"written {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
