#!/usr/bin/env python
"""Write constraints.txt: the exact version of every package alpaca-qlora[dev] needs, as installed here.

Run it in the environment CI tested (after `.ci/run` passed), then commit constraints.txt:
    python .ci/make_constraints.py
pyproject.toml keeps the loose lower bounds (for GPU images and other machines); constraints.txt is the tested stack.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = {"dev", "offline"}


def closure(name: str, extras: set[str], seen: dict[str, str]) -> None:
    canonical = re.sub(r"[-_.]+", "-", name).lower()
    try:
        distribution = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return
    seen[canonical] = distribution.version
    for text in distribution.requires or []:
        requirement = Requirement(text)
        environments = [{**default_environment(), "extra": extra} for extra in extras | {""}]
        if requirement.marker is not None and not any(requirement.marker.evaluate(env) for env in environments):
            continue
        child = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if child not in seen or requirement.extras:
            closure(requirement.name, set(requirement.extras), seen)


def main() -> None:
    seen: dict[str, str] = {}
    closure("alpaca-qlora", EXTRAS, seen)
    seen.pop("alpaca-qlora", None)
    lines = [f"{name}=={version.split('+')[0]}" for name, version in sorted(seen.items())]
    header = ("# The exact versions CI tested (python -m pip install -c constraints.txt -e \".[dev]\").\n"
              "# Regenerate with python .ci/make_constraints.py in that environment; pyproject.toml keeps the lower bounds.\n")
    (ROOT / "constraints.txt").write_text(header + "\n".join(lines) + "\n")
    print(f"wrote {ROOT / 'constraints.txt'} ({len(lines)} packages)")


if __name__ == "__main__":
    main()
