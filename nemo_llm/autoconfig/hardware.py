"""GPU profiles of the estimator: peak dense bf16 FLOP/s, memory, HBM, NVLink and network bandwidth.

Bandwidths are per GPU and per direction: NVLink 3 (A100) moves 600 GB/s both ways, NVLink 4
(H100/H200) 900 GB/s; DGX A100 has one 200 Gb/s HDR InfiniBand port per GPU (25 GB/s), DGX
H100/H200 one 400 Gb/s NDR port per GPU (50 GB/s). Memory is what the device reports to CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

from nemo_llm.errors import NemoLLMError
from nemo_llm.training.throughput import GPU_PEAK_BF16_TFLOPS

GiB = 1024**3


class HardwareError(NemoLLMError, ValueError):
    """An unknown GPU profile."""


@dataclass(frozen=True)
class Hardware:
    name: str
    peak_tflops: float  # dense bf16 tensor-core peak per GPU
    memory_bytes: float  # per GPU
    hbm_gb_s: float  # memory bandwidth per GPU
    nvlink_gb_s: float  # inside a node, per GPU and direction
    network_gb_s: float  # between nodes, per GPU and direction
    gpus_per_node: int = 8

    def link_gb_s(self, group_span: int) -> float:
        """Bandwidth of a collective over a group whose members lie group_span GPUs apart or less:
        NVLink inside a node, the network beyond."""
        return self.nvlink_gb_s if group_span <= self.gpus_per_node else self.network_gb_s


HARDWARE: dict[str, Hardware] = {
    "a100_40gb": Hardware("a100_40gb", GPU_PEAK_BF16_TFLOPS["A100"], 40 * GiB, 1555, 300, 25),
    "a100_80gb": Hardware("a100_80gb", GPU_PEAK_BF16_TFLOPS["A100"], 80 * GiB, 2039, 300, 25),
    "h100_80gb": Hardware("h100_80gb", GPU_PEAK_BF16_TFLOPS["H100"], 79.6 * GiB, 3350, 450, 50),
    "h200_141gb": Hardware("h200_141gb", GPU_PEAK_BF16_TFLOPS["H200"], 140.4 * GiB, 4800, 450, 50),
}


def hardware(name: str) -> Hardware:
    try:
        return HARDWARE[name]
    except KeyError:
        raise HardwareError(f"auto_configurator.gpu={name}: unknown; one of {', '.join(HARDWARE)}") from None
