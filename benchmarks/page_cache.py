"""The page cache, for benchmarks that read from disk (Linux; dropping it needs root)."""

from __future__ import annotations

import os


def drop_caches() -> None:
    """Write back dirty pages, then empty the page cache."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1\n")


def disk_bytes_read() -> int:
    """Bytes read from disk since boot (``pgpgin`` of /proc/vmstat)."""
    with open("/proc/vmstat") as f:
        for line in f:
            if line.startswith("pgpgin "):
                return int(line.split()[1]) * 1024
    raise SystemExit("no pgpgin in /proc/vmstat: a Linux kernel is needed")
