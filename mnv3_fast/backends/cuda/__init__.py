"""The CUDA backend (see backend.py)."""
from .backend import CudaBackend

__all__ = ["CudaBackend"]
