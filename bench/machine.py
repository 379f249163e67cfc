"""What every bench prints beside its numbers: the CPU model, its cores, whether it has AVX-512
or only AVX2 (the same training step can take 4× longer on the second), torch's version and
threads and the vector kernels it uses (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``
make an AVX-512 machine run the AVX2 ones, to profile that path), and the GPU if there is one. Numbers from two machines are only comparable as ratios
measured within one run on each."""

from __future__ import annotations

import os
import platform


def cpu() -> str:
    name, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    vec = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2" if flags else "vector extensions unknown"
    return f"{name}, {os.cpu_count()} cores, {vec}"


def describe() -> str:
    """One line: CPU (model, cores, AVX-512/AVX2), torch and its threads, the GPU if any."""
    parts = [cpu()]
    try:
        import torch

        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads, "
                     f"{torch.backends.cpu.get_cpu_capability()} kernels)")
        if torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    except ImportError:
        pass
    return ", ".join(parts)


def print_machine() -> None:
    print(f"machine: {describe()}", flush=True)
