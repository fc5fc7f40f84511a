"""Shared output of every command that reports figures: an aligned table and a JSON file."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any, Sequence


def machine_description() -> str:
    """One line naming the machine, for benchmark reports."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"
    try:
        import torch

        if torch.cuda.is_available():
            desc += f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return desc


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Format rows as an aligned plain-text table (floats with 3 significant decimals)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "nan"
            return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(cell(v) for v in value) + "]"
        return str(value)

    body = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def write_json(path: str | Path | None, report: dict[str, Any]) -> None:
    """Write ``report`` as indented JSON when ``path`` is given (parent folders created)."""
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")


def add_json_argument(parser) -> None:
    """The ``--json PATH`` option every reporting command shares."""
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
