"""Print the requirements of grpo-guard-studio for the given extras, one per line.

The images install these first, in a layer that only changes with pyproject.toml, and then the
project wheel itself with ``--no-deps``; a code change then rebuilds seconds, not a torch
download. Extras that name the project itself (``all = ["grpo-guard-studio[ui,engine,ocr]"]``)
are expanded.

    python docker/requirements.py pyproject.toml ui          # the app image
    python docker/requirements.py pyproject.toml engine ocr  # the worker image
"""

from __future__ import annotations

import re
import sys
import tomllib


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    project = pyproject["project"]
    own = re.compile(rf"^{re.escape(project['name'])}\s*\[([^\]]*)\]\s*$", re.I)
    optional = project.get("optional-dependencies", {})
    out = list(project.get("dependencies", []))
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"requirements.py: no extra {extra!r} in pyproject.toml "
                             f"(known: {', '.join(sorted(optional))})")
        seen.add(extra)
        for req in optional[extra]:
            m = own.match(req)
            if m:
                todo.extend(x.strip() for x in m.group(1).split(",") if x.strip())
            elif req not in out:
                out.append(req)
    return out


def main(argv: list[str]) -> None:
    if len(argv) < 1:
        raise SystemExit(__doc__)
    with open(argv[0], "rb") as f:
        data = tomllib.load(f)
    print("\n".join(requirements(data, argv[1:])))


if __name__ == "__main__":
    main(sys.argv[1:])
