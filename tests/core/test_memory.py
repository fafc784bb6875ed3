"""A training process keeps the memory it frees (core/memory.py): a step's large tensors reuse the
last step's memory instead of taking new pages from the kernel each time."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

# Allocates a 16 MB tensor (a step's logits), frees it, and prints what glibc's mallinfo2 says of
# each moment: blocks mapped on their own (given back to the kernel when freed), and the free
# bytes the heap keeps.
ALLOCATE_AND_FREE = """
import ctypes, json, sys
import torch
from ptbjobs.core.memory import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
held = libc.mallinfo2().hblkhd
logits = torch.empty(4 << 20).fill_(1.0)
mapped_alone = libc.mallinfo2().hblkhd - held
del logits
print(json.dumps({"kept": kept, "mapped_alone": mapped_alone, "free_in_heap": libc.mallinfo2().fordblks}))
"""


def _after_a_step(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", ALLOCATE_AND_FREE, mode], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt and mallinfo2 are glibc's")
def test_a_freed_large_tensor_stays_in_the_heap_for_the_next_step():
    size = 16 << 20
    default, kept = _after_a_step("default"), _after_a_step("keep")
    # glibc's defaults: the tensor is mapped on its own and unmapped when freed
    assert default["mapped_alone"] >= size and default["free_in_heap"] < size
    assert kept["kept"] is True  # every mallopt value accepted (glibc refuses one out of its range)
    assert kept["mapped_alone"] == 0 and kept["free_in_heap"] >= size
