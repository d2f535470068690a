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


def compound_pages(address: int, length: int) -> tuple[int, int] | None:
    """Return (pages mapped, pages in a large folio) of ``length`` bytes at ``address``.

    Reads ``/proc/self/pagemap`` and ``/proc/kpageflags`` (root only; None
    elsewhere). A page of a large folio is a compound page's head or tail.
    """
    try:
        pagemap = open("/proc/self/pagemap", "rb")  # noqa: SIM115 - closed below
        flags = open("/proc/kpageflags", "rb")  # noqa: SIM115
    except OSError:
        return None
    with pagemap, flags:
        mapped = compound = 0
        for page in range(address // PAGE, (address + length) // PAGE):
            pagemap.seek(page * 8)
            entry = int.from_bytes(pagemap.read(8), "little")
            frame = entry & ((1 << 55) - 1)
            if not entry >> 63 or not frame:  # not present, or PFNs hidden
                continue
            mapped += 1
            flags.seek(frame * 8)
            bits = int.from_bytes(flags.read(8), "little")
            if bits & (_COMPOUND_HEAD | _COMPOUND_TAIL):
                compound += 1
    return mapped, compound


PAGE = 4096
_COMPOUND_HEAD = 1 << 15  # KPF_COMPOUND_HEAD
_COMPOUND_TAIL = 1 << 16  # KPF_COMPOUND_TAIL
