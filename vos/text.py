"""Plain-text output shared by the command lines: aligned tables and file sizes."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence


def human_size(num_bytes: int | float) -> str:
    """A byte count for people: "512 B", "3.4 KB", "1.2 GB" (powers of 1000, as the units say)."""
    size = float(num_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{int(num_bytes)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")  # the loop returns at "GB"


def format_table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    rule: bool = False,
    ragged_last: bool = False,
    right: Collection[int] = (),
) -> str:
    """Columns padded to their widest cell and separated by two spaces, the header first (then a line of dashes
    with ``rule``); the columns numbered in ``right`` (numbers) are right-aligned. With ``ragged_last`` the last
    column is not padded, so a long free-text column does not decide the width of the others."""
    table = [tuple(header), *(tuple(row) for row in rows)]
    padded = len(header) - 1 if ragged_last else len(header)
    widths = [max(len(row[i]) for row in table) for i in range(padded)]

    def line(row: Sequence[str]) -> str:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        return "  ".join([*cells, *row[padded:]]).rstrip()

    lines = [line(row) for row in table]
    if rule:
        lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
