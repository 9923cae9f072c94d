"""The CPU backend: the whole eval forward as one `mnv3::run_cpu_program` call
(backend.py), over the folded plan packed for oneDNN and encoded as a program
(program.py)."""
from .backend import CpuProgramBackend

__all__ = ["CpuProgramBackend"]
