"""``flywheel checkgpu``: what PyTorch sees, said plainly."""

from __future__ import annotations

import typer


def describe_accelerator() -> list[str]:
    """Lines describing the CUDA devices torch can use, or that it runs on CPU."""
    import torch

    lines = [f"torch {torch.__version__}"]
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (CPU-only build)"
        lines.append(f"CUDA not available (torch built with CUDA: {built}); training runs on CPU")
        lines.append(f"CPU threads: {torch.get_num_threads()}")
        return lines
    cudnn = torch.backends.cudnn.version()  # type: ignore[no-untyped-call]
    lines.append(f"CUDA {torch.version.cuda}, cuDNN {cudnn}")
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        lines.append(
            f"cuda:{index} {props.name}: {total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free), "
            f"compute capability {props.major}.{props.minor}, "
            f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"
        )
    return lines


def checkgpu() -> None:
    """Print what PyTorch sees: device name, memory and CUDA version, or that it is on CPU."""
    for line in describe_accelerator():
        typer.echo(line)


def register(app: typer.Typer) -> None:
    """Add ``checkgpu`` to the ``flywheel`` CLI."""
    app.command()(checkgpu)
