"""Performance benchmarks of the SAM 3D adapter, on this machine, in one run.

    python benchmarks/run_benchmarks.py                  # every CPU case (about 15 min on 2 cores)
    python benchmarks/run_benchmarks.py --cases matmul encoder_fp32
    python benchmarks/run_benchmarks.py --gpu            # the GPU cases, where CUDA is present

A CPU case runs in its own subprocess, so its peak memory (ru_maxrss) is its own; the GPU cases share one
process and report the allocator's peak (max_memory_allocated), reset between cases. Prints a line per
case and writes ``benchmarks/results/<cpu|gpu>-<host>.json`` after each case. Random weights: the speed of
a network does not depend on its weights.

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
- gpu_*: the paper configuration (vit_b, 128^3, batch 1) on CUDA: matmul rates, encoder MFU, click
  latencies, and the training step with all optimisations (fused patch embedding, SDPA with folded
  relative positions, bf16 autocast, activation checkpointing, frozen SAM tensors), then with each one
  taken away, then with the published implementation's choices all at once; nnU-Net's step (fp16
  autocast, as its trainer) at batch 1 and 2 for the same patch.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
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
             "click_bf16", "click_fp32_linear_decoder", "click_bf16_linear_decoder", "train_step_sam3d_tiny", "train_step_nnunet_tiny_patch", "train_step_sam3d_vit_b",
             "train_step_nnunet_vit_b_patch"]
GPU_CASES = ["gpu_matmul", "gpu_encoder_bf16", "gpu_click_bf16", "gpu_click_fp32", "gpu_click_bf16_linear_decoder", "gpu_train_all_optimisations",
             "gpu_train_no_checkpointing", "gpu_train_fp32", "gpu_train_paper_patch_embed",
             "gpu_train_explicit_attention", "gpu_train_all_trainable", "gpu_train_published_choices",
             "gpu_train_nnunet_batch1", "gpu_train_nnunet_batch2", "gpu_memory_grid"]
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
    kwargs = {"token_stride": 4, "window_size": 8 if variant != "tiny" else 4, **kwargs}
    return SAM3DNet(1, 2, variant=variant, patch_size=patch, **kwargs).to(device)


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


def _encoder(precision: str, device: str = "cpu") -> dict:
    import torch

    from sam3d_nnunet.model import autocast

    model = _sam3d("vit_b", PAPER_PATCH, device=device).eval()
    x = torch.randn(1, 1, *PAPER_PATCH, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.device("meta"):
        flops = _flops(lambda: _sam3d("vit_b", PAPER_PATCH, device="meta").eval().encode(torch.randn(1, 1, *PAPER_PATCH)))
    with torch.inference_mode(), autocast(device, precision):
        seconds = _timeit(lambda: model.encode(x), repeats=1 if device == "cpu" else 5, warmup=1, sync=sync)
    rate = _matmul_rate("float32" if precision == "fp32" else "bfloat16", device,
                        4096 if device == "cpu" else 8192)["gflops_per_s"]
    achieved = flops / seconds / 1e9
    return {"seconds": seconds, "tflop": flops / 1e12, "gflops_per_s": achieved, "matmul_gflops_per_s": rate,
            "mfu_vs_same_precision_matmul": achieved / rate}


def case_encoder_fp32() -> dict:
    return _encoder("fp32")


def case_encoder_bf16() -> dict:
    return _encoder("bf16")


def _clicks(precision: str, device: str = "cpu", decoder: str = "mla") -> dict:
    """First click (encoder + sampler + decoder) and next click (sampler + decoder on the cached features)."""
    import torch

    from sam3d_nnunet.model import autocast

    model = _sam3d("vit_b", PAPER_PATCH, device=device, decoder=decoder).eval()
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


def case_click_fp32_linear_decoder() -> dict:
    return _clicks("fp32", decoder="linear")


def case_click_bf16_linear_decoder() -> dict:
    return _clicks("bf16", decoder="linear")


def _train_step_sam3d(variant: str, patch, batch: int, device: str = "cpu", precision: str = "fp32",
                      gradient_checkpointing: bool = False, **network_kwargs) -> dict:
    import torch
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from sam3d_nnunet.model import autocast, parameter_summary

    model = _sam3d(variant, patch, device=device, gradient_checkpointing=gradient_checkpointing,
                   **network_kwargs).train()
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
           "gradient_checkpointing": gradient_checkpointing, **network_kwargs,
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

    # nnUNetTrainer.train_step: fp16 autocast with a GradScaler on CUDA, fp32 on CPU
    scaler = torch.amp.GradScaler("cuda") if device == "cuda" else None

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, enabled=device == "cuda"):
            value = loss(network(x), targets)
        if scaler is None:
            value.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
            optimizer.step()
        else:
            scaler.scale(value).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
            scaler.step(optimizer)
            scaler.update()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = _timeit(step, repeats=3, warmup=1, sync=sync)
    out = {"seconds": seconds, "patch": list(patch), "batch": batch, "stages": n_stages,
           "precision": "fp16 autocast" if device == "cuda" else "fp32",
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
# The paper configuration (vit_b, one 128^3 crop, batch 1, adapters), training step with all of the
# project's optimisations and then with each one taken away, plus the published implementation's choices
# all at once (the paper's patch embedding, explicit N x N attention bias, fp32, no checkpointing).
@contextlib.contextmanager
def explicit_attention():
    """Run WindowAttention3D as SAM formulates it: an explicit [B, heads, N, N] relative-position bias
    added to the logits, softmax, no fused kernel (the reference the folded SDPA path is tested against)."""
    import torch

    from sam3d_nnunet.model.attention import WindowAttention3D, decomposed_rel_pos_bias

    def forward(self, x, mask=None):
        bw, d, h, w, c = x.shape
        n = d * h * w
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        logits = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
        logits = logits + decomposed_rel_pos_bias(q, self.rel_pos_d.to(q.dtype), self.rel_pos_h.to(q.dtype),
                                                  self.rel_pos_w.to(q.dtype), (d, h, w))
        if mask is not None:
            logits = logits.view(-1, mask.shape[0], self.num_heads, n, n).masked_fill(
                ~mask[None, :, None], float("-inf")).view(bw, self.num_heads, n, n)
        out = logits.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(bw, d, h, w, c))

    original = WindowAttention3D.forward
    WindowAttention3D.forward = forward
    try:
        yield
    finally:
        WindowAttention3D.forward = original


GPU = "cuda"  # a dry run on CPU sets this to "cpu"


def _gpu_train(precision="bf16", gradient_checkpointing=True, **kwargs) -> dict:
    return _train_step_sam3d("vit_b", PAPER_PATCH, 1, GPU, precision, gradient_checkpointing, **kwargs)


def case_gpu_matmul() -> dict:
    return {"bf16": _matmul_rate("bfloat16", GPU, 8192), "fp32": _matmul_rate("float32", GPU, 8192)}


def case_gpu_encoder_bf16() -> dict:
    return _encoder("bf16", GPU)


def case_gpu_click_bf16() -> dict:
    return _clicks("bf16", GPU)


def case_gpu_click_fp32() -> dict:
    return _clicks("fp32", GPU)


def case_gpu_click_bf16_linear_decoder() -> dict:
    return _clicks("bf16", GPU, decoder="linear")


def case_gpu_train_all_optimisations() -> dict:
    return _gpu_train()


def case_gpu_train_no_checkpointing() -> dict:
    return _gpu_train(gradient_checkpointing=False)


def case_gpu_train_fp32() -> dict:
    return _gpu_train(precision="fp32")


def case_gpu_train_paper_patch_embed() -> dict:
    return _gpu_train(patch_embed_mode="paper")


def case_gpu_train_explicit_attention() -> dict:
    with explicit_attention():
        return _gpu_train()


def case_gpu_train_all_trainable() -> dict:
    return _gpu_train(finetune="full")


def case_gpu_train_published_choices() -> dict:
    with explicit_attention():
        return _gpu_train(precision="fp32", gradient_checkpointing=False, patch_embed_mode="paper")


# (variant, patch, token stride, batch, activation checkpointing, fine-tuning policy): the measurements
# the planner's memory model (sam3d_nnunet/model/memory.py) is calibrated and checked on
MEMORY_GRID = [
    ("vit_b", (128, 128, 128), 4, 1, False, "adapter"), ("vit_b", (128, 128, 128), 4, 1, True, "adapter"),
    ("vit_b", (128, 128, 128), 4, 2, False, "adapter"), ("vit_b", (128, 128, 128), 4, 2, True, "adapter"),
    ("vit_b", (96, 96, 96), 4, 1, False, "adapter"), ("vit_b", (64, 64, 64), 4, 2, False, "adapter"),
    ("vit_b", (32, 128, 128), (1, 4, 4), 1, False, "adapter"), ("vit_b", (128, 128, 128), 4, 1, False, "full"),
    ("vit_b", (128, 128, 128), 4, 1, False, "lora"), ("vit_l", (128, 128, 128), 4, 1, False, "adapter"),
    ("vit_l", (128, 128, 128), 4, 1, True, "adapter"), ("tiny", (64, 64, 64), 4, 2, False, "adapter"),
    ("tiny", (64, 64, 64), 4, 2, True, "adapter"),
]


def case_gpu_memory_grid() -> dict:
    import torch

    rows = []
    for variant, patch, stride, batch, checkpointing, finetune in MEMORY_GRID:
        gc.collect()
        torch.cuda.empty_cache()
        row = {"variant": variant, "patch": list(patch), "token_stride": stride, "batch": batch,
               "gradient_checkpointing": checkpointing, "finetune": finetune}
        try:
            step = _train_step_sam3d(variant, patch, batch, GPU, "bf16", checkpointing, token_stride=stride,
                                     finetune=finetune)
            row.update(seconds=step["seconds"], peak_gpu_gb=step.get("peak_gpu_gb"))
        except Exception as error:
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        print("   ", json.dumps(row), flush=True)
        rows.append(row)
    return {"rows": rows}


def case_gpu_train_nnunet_batch1() -> dict:
    return _train_step_nnunet(PAPER_PATCH, 1, GPU)


def case_gpu_train_nnunet_batch2() -> dict:
    return _train_step_nnunet(PAPER_PATCH, 2, GPU)


# ----------------------------------------------------------------------------------------------- driver
def run_case(name: str) -> dict:
    result = globals()[f"case_{name}"]()
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return result


def run_gpu_case(name: str) -> dict:
    """GPU cases share one process (a CUDA start per case would cost more than the cases); the peak is
    the allocator's, reset after the previous case's tensors are freed."""
    import torch

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        result = globals()[f"case_{name}"]()
    except Exception as error:  # one failing case (out of memory, say) must not lose the others
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
    result.setdefault("peak_gpu_gb", torch.cuda.max_memory_allocated() / 1e9)
    return result


def _write(output: Path, payload: dict) -> None:
    from sam3d_nnunet.atomic import save_json_atomic
    save_json_atomic(payload, output, indent=2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=None, help="subset of cases to run")
    parser.add_argument("--gpu", action="store_true", help="run the GPU cases instead of the CPU ones")
    parser.add_argument("--output", default=None, help="JSON file (default benchmarks/results/<device>-<host>.json)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_case(args.one)))
        return 0
    import torch

    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu: no CUDA device is visible to torch")
    if args.gpu:
        torch.backends.cudnn.benchmark = True  # as nnU-Net's trainer sets it
    cases = args.cases or (GPU_CASES if args.gpu else CPU_CASES)
    device = torch.cuda.get_device_name(0) if args.gpu else "cpu"
    machine = {"host": platform.node(), "processor": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "device": device, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    output = Path(args.output or HERE / "results" / f"{'gpu' if args.gpu else 'cpu'}-{platform.node()}.json")
    results = {}
    for name in cases:
        start = time.time()
        if args.gpu:
            results[name] = run_gpu_case(name)
        else:
            proc = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            results[name] = json.loads(line[7:]) if line else {"error": proc.stderr.strip().splitlines()[-1:]}
        print(f"{name:<40} {time.time() - start:7.1f} s  {json.dumps(results[name])}", flush=True)
        _write(output, {"machine": machine, "results": results})  # after each case: a killed run keeps its cases
    print(f"written {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
