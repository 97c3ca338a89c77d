"""Shared ending of the benchmark scripts: print a Markdown table, and append it to a file when asked."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_description() -> str:
    """This CPU as speed tables name it: its x86 capability, bf16 units and the kernels SAN's inference swaps in
    (``san.modeling.cpu_kernels.kernel_choice``). Imports torch: only for the benchmarks that run the model."""
    import torch

    from san.modeling.cpu_kernels import kernel_choice
    from san.precision import cpu_bf16_units

    choice = kernel_choice()
    swapped = ", ".join(
        ["float32 linear"] * choice.float32_linear
        + [f"{str(t)[6:]} attention" for t in sorted(choice.attention_dtypes, key=str)]
    )
    return (
        f"{_cpu_model()} ({torch.backends.cpu.get_cpu_capability()}, bf16 units: "
        f"{', '.join(cpu_bf16_units()) or 'none'}; oneDNN kernels: {swapped or 'none'})"
    )


def _cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else the machine's architecture."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def emit(lines: list[str], write: Path | None) -> None:
    """Print ``lines`` and, when ``write`` is given, append them to that Markdown file."""
    text = "\n".join(lines).rstrip("\n") + "\n"
    print(text)
    if write:
        with open(write, "a", encoding="utf-8") as handle:
            handle.write("\n" + text)
