"""Peak FLOP/s of a device, the denominator of model FLOPs utilisation (MFU)."""

from __future__ import annotations

import time

import torch

# Dense bf16 tensor-core peaks in TFLOP/s (vendor datasheets, SXM parts); fp32 runs use TF32, half of these.
GPU_PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "V100": 125.0,
}


def gpu_peak_tflops(name: str, precision: str) -> float | None:
    for key, tflops in GPU_PEAK_BF16_TFLOPS.items():
        if key in name.upper():
            return tflops if precision != "32" else tflops / 2
    return None


def measure_cpu_tflops(dtype: torch.dtype = torch.float32, size: int = 512, seconds: float = 0.3) -> float:
    """Achieved matmul TFLOP/s of this process (with its thread count). CPUs have no datasheet peak
    that means much for this: MFU on CPU is measured against this rate."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up
    iterations, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        iterations += 1
    return 2 * size**3 * iterations / (time.perf_counter() - start) / 1e12


def peak_tflops_per_device(device: torch.device, precision: str, configured: float | None = None) -> float:
    """trainer.peak_tflops_per_device when set; else the GPU's datasheet peak or the measured CPU rate."""
    if configured:
        return float(configured)
    if device.type == "cuda":
        peak = gpu_peak_tflops(torch.cuda.get_device_name(device), precision)
        if peak is None:
            raise ValueError(f"unknown peak FLOP/s for {torch.cuda.get_device_name(device)}: "
                             "set trainer.peak_tflops_per_device")
        return peak
    # Without native bf16 units a CPU runs bf16 slower than fp32: its best rate is the ceiling.
    best = measure_cpu_tflops(torch.float32)
    if precision == "bf16-mixed":
        best = max(best, measure_cpu_tflops(torch.bfloat16))
    return best
