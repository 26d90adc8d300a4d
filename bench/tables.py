"""The one check behind every table script in bench/: each table row it rebuilt from the committed raw results must
appear, as is, in the markdown file given with --check (BENCHMARKS.md); exit 1 naming the first that does not."""

from __future__ import annotations

import sys
from pathlib import Path


def check_rows(lines: list[str], markdown: str | Path | None) -> None:
    """Print the rebuilt lines; with a markdown file, fail unless each table row ("| ...") is in it."""
    print("\n".join(lines))
    empty = [lines[i - 1] for i, line in enumerate(lines) if line.startswith("|---")
             and not (i + 1 < len(lines) and lines[i + 1].startswith("| "))]
    if empty:  # a table with no rows would pass the check below without checking anything
        sys.exit(f"no results gave a row of the table {empty[0]}")
    if markdown is None:
        return
    text = Path(markdown).read_text(encoding="utf-8")
    missing = [line for line in lines if line.startswith("| ") and line not in text]
    if missing:
        sys.exit(f"{markdown}: {len(missing)} row(s) differ from the results, e.g.\n{missing[0]}")
    print(f"{markdown}: all {sum(line.startswith('| ') for line in lines)} rows match")
