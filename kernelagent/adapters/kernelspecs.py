"""The kernelspecs shipped in ``kernel_images/``: where they are, and installing them for Jupyter.

``pip install kernelagent`` already installs them into ``<prefix>/share/jupyter/kernels``; the
server also resolves them from the package itself, so a source checkout works without installing.
"""

from __future__ import annotations

from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_core.paths import jupyter_path

PACKAGED = Path(__file__).resolve().parent.parent / "kernel_images"
SOURCE_TREE = Path(__file__).resolve().parent.parent.parent / "kernel_images"


def images_dir() -> Path:
    """The directory holding one folder per shipped kernelspec."""
    return PACKAGED if PACKAGED.is_dir() else SOURCE_TREE


def kernel_dirs() -> list[str]:
    """Jupyter's kernel search path with the shipped kernelspecs first."""
    return [str(images_dir()), *jupyter_path("kernels")]


def install(user: bool = False, prefix: str | None = None) -> list[str]:
    """Install every shipped kernelspec for other Jupyter tools; returns the install paths."""
    manager = KernelSpecManager()
    return [
        manager.install_kernel_spec(str(spec), spec.name, user=user, prefix=prefix)
        for spec in sorted(images_dir().iterdir())
        if (spec / "kernel.json").is_file()
    ]
