import torch

from nemo_llm.training.throughput import gpu_peak_tflops, measure_cpu_tflops, peak_tflops_per_device


def test_gpu_datasheet_peaks():
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3", "bf16-mixed") == 989.0
    assert gpu_peak_tflops("NVIDIA H200", "32") == 989.0 / 2  # TF32
    assert gpu_peak_tflops("NVIDIA A100-SXM4-80GB", "bf16-mixed") == 312.0
    assert gpu_peak_tflops("Some Future GPU", "bf16-mixed") is None


def test_cpu_ceiling_is_measured_and_configurable():
    assert measure_cpu_tflops(seconds=0.05) > 0
    assert peak_tflops_per_device(torch.device("cpu"), "32", configured=1.5) == 1.5
    fp32 = peak_tflops_per_device(torch.device("cpu"), "bf16-mixed")
    assert fp32 > 0
