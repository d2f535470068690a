"""Read this process's ``/proc/self/smaps``: what the kernel says of one mapping."""

from __future__ import annotations


def smaps_field(address: int, field: str) -> list[str]:
    """Return the words after ``field:`` for this process's mapping at ``address``."""
    with open("/proc/self/smaps") as smaps:
        inside = False
        for line in smaps:
            head = line.split(" ", 1)[0]
            if "-" in head and not head.endswith(":"):
                inside = int(head.split("-")[0], 16) == address
            elif inside and line.startswith(f"{field}:"):
                return line.split()[1:]
    raise AssertionError(f"no mapping at {address:#x}")
