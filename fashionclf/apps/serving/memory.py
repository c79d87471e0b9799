"""The service's own memory: its resident size, and giving freed heap back to the system.

`fashionclf` raises glibc's mmap and trim thresholds for every command (cli keep_freed_memory), so a service would
keep the peak of its largest decode for good; the Gate (limits.py) calls trim_heap after large decodes and when the
workers fall idle (docs/serve-export.md#memory-keep_freed_memory-and-serve).
"""

from __future__ import annotations

from fashionclf.engine.device import glibc

TRIM_AFTER_PIXELS = 4_000_000  # decoded since the last trim: below this, what the heap keeps is not worth a call
TRIM_AFTER_DECODE_MB = 16  # one decode that may have held this much is trimmed after at once (Gate.decoding)


def trim_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc's malloc_trim); False where there is no glibc."""
    libc = glibc()
    try:
        return bool(libc is not None and libc.malloc_trim(0))
    except AttributeError:
        return False


def resident_mb() -> float | None:
    """This process's resident memory in MB (Linux's /proc), or None where it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
