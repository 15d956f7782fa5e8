"""Performance benchmarks of the SAM 3D adapter, on this machine, in one run.

    python benchmarks/run_benchmarks.py                  # every CPU case (about 15 min on 2 cores)
    python benchmarks/run_benchmarks.py --cases matmul encoder_fp32
    python benchmarks/run_benchmarks.py --gpu            # the GPU cases, where CUDA is present

Each case runs in its own subprocess, so its peak memory (ru_maxrss on CPU, max_memory_allocated on
GPU) is its own. Prints a table and writes ``benchmarks/results/<host>-<device>.json``. Random weights: the
speed of a network does not depend on its weights.

Cases:
- matmul_fp32 / matmul_bf16: the machine's rate for a large square matrix product (the reference for the
  model FLOP utilisation, MFU).
- patch_embed_flops: FLOPs of the paper's patch embedding (x4 upsample, 2D patches on 512 slices, depth
  conv) against the fused strided Conv3d, counted by torch's FlopCounterMode.
- encoder_fp32 / encoder_bf16: vit_b encoder forward (+ the decoder's prompt-independent part) on one
  128^3 crop: time, FLOPs, MFU against the same-precision matmul rate.
- click_fp32 / click_bf16: the interactive latencies on a 128^3 region with vit_b: first click = encode +
  decode, next click = decode only on cached features.
- train_step_sam3d / train_step_nnunet: one training step (forward, Dice+CE backward, optimizer step) of
  the SAM3D network (tiny and vit_b, adapters, AdamW on trainable tensors) and of nnU-Net's default
  PlainConvUNet planned for the same patch and batch size, with each trainer's own loss and optimizer.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CPU_CASES = ["matmul_fp32", "matmul_bf16", "patch_embed_flops", "encoder_fp32", "encoder_bf16", "click_fp32",
             "click_bf16", "train_step_sam3d_tiny", "train_step_nnunet_tiny_patch", "train_step_sam3d_vit_b",
             "train_step_nnunet_vit_b_patch"]
GPU_CASES = ["gpu_matmul_bf16", "gpu_train_step_vit_b", "gpu_train_step_vit_b_no_checkpointing",
             "gpu_train_step_vit_b_fp32", "gpu_click_vit_b", "gpu_train_step_nnunet_vit_b_patch"]
PAPER_PATCH = (128, 128, 128)
TINY_PATCH = (64, 64, 64)


# ----------------------------------------------------------------------------------------------- helpers
def _timeit(fn, repeats: int = 3, warmup: int = 1, sync=lambda: None) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def _flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _sam3d(variant: str, patch, device="cpu", **kwargs):
    import torch

    from sam3d_nnunet.model import SAM3DNet

    torch.manual_seed(0)
    window = 8 if variant != "tiny" else 4
    return SAM3DNet(1, 2, variant=variant, patch_size=patch, token_stride=4, window_size=window,
                    **kwargs).to(device)


def _matmul_rate(dtype_name: str, device: str = "cpu", n: int = 4096) -> dict:
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    seconds = _timeit(lambda: a @ b, repeats=5, sync=sync)
    return {"seconds": seconds, "gflops_per_s": 2 * n ** 3 / seconds / 1e9, "n": n}


# ----------------------------------------------------------------------------------------------- CPU cases
def case_matmul_fp32() -> dict:
    return _matmul_rate("float32")


def case_matmul_bf16() -> dict:
    return _matmul_rate("bfloat16")


def case_patch_embed_flops() -> dict:
    import torch

    with torch.device("meta"):
        x = torch.randn(1, 3, *PAPER_PATCH)
        fused = _sam3d("vit_b", PAPER_PATCH, device="meta").image_encoder.patch_embed
        paper = _sam3d("vit_b", PAPER_PATCH, device="meta", patch_embed_mode="paper").image_encoder.patch_embed
        f_fused, f_paper = _flops(lambda: fused(x)), _flops(lambda: paper(x))
    # the paper's path materialises the x4-upsampled crop: 512^3 x 3 fp32 values
    return {"gflop_paper": f_paper / 1e9, "gflop_fused": f_fused / 1e9, "ratio": f_paper / f_fused,
            "paper_upsampled_tensor_gb": 3 * (4 * 128) ** 3 * 4 / 1e9}


def _encoder(precision: str) -> dict:
    import torch

    from sam3d_nnunet.model import autocast

    model = _sam3d("vit_b", PAPER_PATCH).eval()
    x = torch.randn(1, 1, *PAPER_PATCH)
    with torch.device("meta"):
        flops = _flops(lambda: _sam3d("vit_b", PAPER_PATCH, device="meta").eval().encode(torch.randn(1, 1, *PAPER_PATCH)))
    with torch.inference_mode(), autocast("cpu", precision):
        seconds = _timeit(lambda: model.encode(x), repeats=1, warmup=1)
    rate = _matmul_rate("float32" if precision == "fp32" else "bfloat16")["gflops_per_s"]
    achieved = flops / seconds / 1e9
    return {"seconds": seconds, "tflop": flops / 1e12, "gflops_per_s": achieved, "matmul_gflops_per_s": rate,
            "mfu_vs_same_precision_matmul": achieved / rate}


def case_encoder_fp32() -> dict:
    return _encoder("fp32")


def case_encoder_bf16() -> dict:
    return _encoder("bf16")


def _clicks(precision: str, device: str = "cpu") -> dict:
    import torch

    from sam3d_nnunet.model import autocast

    model = _sam3d("vit_b", PAPER_PATCH, device=device).eval()
    x = torch.randn(1, 1, *PAPER_PATCH, device=device)
    clicks = torch.tensor([[[64.0, 64.0, 64.0]]], device=device)
    labels = torch.ones(1, 1, dtype=torch.long, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.inference_mode(), autocast(device, precision):
        features = model.encode(x)  # warm-up (allocator, oneDNN primitives)
        model.decode(features, clicks, labels, 1)
        sync()
        start = time.perf_counter()
        features = model.encode(x)
        model.decode(features, clicks, labels, 1)
        sync()
        first = time.perf_counter() - start
        more = torch.tensor([[[64.0, 64.0, 64.0], [40.0, 70.0, 90.0]]], device=device)
        next_click = _timeit(lambda: model.decode(features, more, torch.tensor([[1, 0]], device=device), 1),
                             repeats=3, warmup=1, sync=sync)
    return {"first_click_s": first, "next_click_s": next_click, "next_over_first": next_click / first}


def case_click_fp32() -> dict:
    return _clicks("fp32")


def case_click_bf16() -> dict:
    return _clicks("bf16")


def _train_step_sam3d(variant: str, patch, batch: int, device: str = "cpu", precision: str = "fp32",
                      gradient_checkpointing: bool = False) -> dict:
    import torch
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from sam3d_nnunet.model import autocast, parameter_summary

    model = _sam3d(variant, patch, device=device, gradient_checkpointing=gradient_checkpointing).train()
    loss_fn = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                             weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=4e-4, weight_decay=0)
    x = torch.randn(batch, 1, *patch, device=device)
    target = (torch.rand(batch, 1, *patch, device=device) > 0.7).long()
    clicks = torch.rand(batch, 3, 3, device=device) * torch.tensor(patch, device=device)
    labels = torch.tensor([[1, 1, 0]] * batch, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            logits = model(x, clicks, labels, 1)
        loss = loss_fn(logits.float(), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = _timeit(step, repeats=3, warmup=1, sync=sync)
    out = {"seconds": seconds, "variant": variant, "patch": list(patch), "batch": batch, "precision": precision,
           "gradient_checkpointing": gradient_checkpointing,
           "trainable_params": parameter_summary(model)["total_trainable"]}
    if device == "cuda":
        out["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def _train_step_nnunet(patch, batch: int, device: str = "cpu") -> dict:
    """nnU-Net's default 3d_fullres network as its planner would configure it for this patch (1 mm data),
    with nnU-Net's loss (Dice + CE, deep supervision) and optimizer (SGD, Nesterov, momentum 0.99)."""
    import numpy as np
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    torch.manual_seed(0)
    _, strides, kernels, shape, _ = get_pool_and_conv_props([1.0, 1.0, 1.0], list(patch), 4, 999999)
    n_stages = len(kernels)
    features = [min(32 * 2 ** i, 320) for i in range(n_stages)]
    network = PlainConvUNet(1, n_stages, features, torch.nn.Conv3d, kernels, strides, [2] * n_stages, 2,
                            [2] * (n_stages - 1), conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                            norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                            nonlin_kwargs={"inplace": True}, deep_supervision=True).to(device).train()
    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    scales = list(list(i) for i in 1 / np.cumprod(np.vstack(strides), axis=0))[:-1]
    weights = np.array([1 / (2 ** i) for i in range(len(scales))])
    loss = DeepSupervisionWrapper(loss, weights / weights.sum())
    optimizer = torch.optim.SGD(network.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    x = torch.randn(batch, 1, *patch, device=device)
    full = (torch.rand(batch, 1, *patch, device=device) > 0.7).float()
    targets = [torch.nn.functional.interpolate(full, scale_factor=tuple(s), mode="nearest").long() for s in scales]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        optimizer.zero_grad(set_to_none=True)
        output = network(x)
        loss(output, targets).backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        optimizer.step()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = _timeit(step, repeats=3, warmup=1, sync=sync)
    out = {"seconds": seconds, "patch": list(patch), "batch": batch, "stages": n_stages,
           "params": sum(p.numel() for p in network.parameters())}
    if device == "cuda":
        out["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def case_train_step_sam3d_tiny() -> dict:
    return _train_step_sam3d("tiny", TINY_PATCH, batch=2)


def case_train_step_nnunet_tiny_patch() -> dict:
    return _train_step_nnunet(TINY_PATCH, batch=2)


def case_train_step_sam3d_vit_b() -> dict:
    return _train_step_sam3d("vit_b", PAPER_PATCH, batch=1, precision="bf16", gradient_checkpointing=True)


def case_train_step_nnunet_vit_b_patch() -> dict:
    return _train_step_nnunet(PAPER_PATCH, batch=1)


# ----------------------------------------------------------------------------------------------- GPU cases
def case_gpu_matmul_bf16() -> dict:
    return {**_matmul_rate("bfloat16", "cuda", 8192), "fp32": _matmul_rate("float32", "cuda", 8192)}


def case_gpu_train_step_vit_b() -> dict:
    return _train_step_sam3d("vit_b", PAPER_PATCH, 1, "cuda", "bf16", gradient_checkpointing=True)


def case_gpu_train_step_vit_b_no_checkpointing() -> dict:
    return _train_step_sam3d("vit_b", PAPER_PATCH, 1, "cuda", "bf16", gradient_checkpointing=False)


def case_gpu_train_step_vit_b_fp32() -> dict:
    return _train_step_sam3d("vit_b", PAPER_PATCH, 1, "cuda", "fp32", gradient_checkpointing=False)


def case_gpu_click_vit_b() -> dict:
    return _clicks("bf16", "cuda")


def case_gpu_train_step_nnunet_vit_b_patch() -> dict:
    return _train_step_nnunet(PAPER_PATCH, 1, "cuda")


# ----------------------------------------------------------------------------------------------- driver
def run_case(name: str) -> dict:
    result = globals()[f"case_{name}"]()
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=None, help="subset of cases to run")
    parser.add_argument("--gpu", action="store_true", help="run the GPU cases instead of the CPU ones")
    parser.add_argument("--output", default=None, help="JSON file (default benchmarks/results/<host>-<device>.json)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_case(args.one)))
        return 0
    import torch

    cases = args.cases or (GPU_CASES if args.gpu else CPU_CASES)
    device = torch.cuda.get_device_name(0) if args.gpu and torch.cuda.is_available() else "cpu"
    machine = {"host": platform.node(), "processor": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "device": device, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    results = {}
    for name in cases:
        start = time.time()
        proc = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        results[name] = json.loads(line[7:]) if line else {"error": proc.stderr.strip().splitlines()[-1:]}
        print(f"{name:<40} {time.time() - start:7.1f} s  {json.dumps(results[name])}", flush=True)
    output = Path(args.output or HERE / "results" / f"{'gpu' if args.gpu else 'cpu'}-{platform.node()}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".tmp")
    tmp.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    os.replace(tmp, output)
    print(f"written {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
