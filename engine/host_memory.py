"""Host memory of CPU training: give the memory of freed tensors back to the OS at once
(``lean``) or keep it for reuse (``fast``); the task CLI's ``fit`` takes ``fast`` where the
machine has the memory for it (``training_default``).

PyTorch allocates CPU tensors with the C library's ``malloc``. glibc serves a large request
with its own ``mmap`` (unmapped again on free) only above a threshold that it raises, up to
32 MB, every time such a block is freed; after the first training step most activation-sized
tensors therefore come from the heap, whose freed pages stay resident and fragment. A
training step's resident set then peaks far above the memory it really uses. Fixing the
threshold keeps every tensor of ``threshold_bytes`` or more on ``mmap``.

The price is time: every step maps fresh pages for its activations and the kernel zeroes
them. Serving every tensor from the heap and never trimming it (``keep_freed_tensors``) makes
the same step much faster, for about twice the resident set, which stays flat over epochs as
each step reuses the pages of the last. The README and the benchmark report
(``benchmarks/training.py``, ``benchmarks/memory.py``) give the measured figures.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_MMAP_THRESHOLD = -3
POLICIES = ("lean", "fast")
POLICY_ENV = "MOBILEDET_HOST_MEMORY"
# Physical memory from which training keeps freed tensors (``fast``): room for its doubled
# resident set (SSDLite, batch 32, 320 x 320: 6.6 GB) beside everything else a machine runs.
FAST_TRAINING_MIN_BYTES = 16 << 30


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def release_freed_tensors_to_os(threshold_bytes: int = 1 << 20) -> bool:
    """Fix glibc's mmap threshold at ``threshold_bytes`` for this process; False (and no
    change) where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    if not libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes):
        log.warning("mallopt(M_MMAP_THRESHOLD, %d) failed; host memory may fragment", threshold_bytes)
        return False
    return True


def keep_freed_tensors() -> bool:
    """Serve every allocation from glibc's heap and never give it back, so each training step
    reuses the pages of the last one; False (and no change) where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    if not (libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)):
        log.warning("mallopt(M_MMAP_MAX / M_TRIM_THRESHOLD) failed; freed host memory may not be reused")
        return False
    return True


def physical_memory_bytes() -> int | None:
    """This machine's physical memory, None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def training_default() -> str:
    """The policy of ``fit``: ``fast`` with at least ``FAST_TRAINING_MIN_BYTES`` of physical
    memory, else ``lean``."""
    memory = physical_memory_bytes()
    return "fast" if memory is not None and memory >= FAST_TRAINING_MIN_BYTES else "lean"


def apply_host_memory_policy(policy: str | None = None, default: str | None = "lean") -> bool:
    """``lean`` (``release_freed_tensors_to_os``) or ``fast`` (``keep_freed_tensors``): ``policy``,
    else the ``MOBILEDET_HOST_MEMORY`` environment variable, else ``default``; with none of them
    (``default=None``) glibc's own behaviour stays and this returns False."""
    policy = policy or os.environ.get(POLICY_ENV) or default
    if policy is None:
        return False
    if policy not in POLICIES:
        raise ValueError(f"{POLICY_ENV}={policy!r}: expected one of {', '.join(POLICIES)}")
    return release_freed_tensors_to_os() if policy == "lean" else keep_freed_tensors()
