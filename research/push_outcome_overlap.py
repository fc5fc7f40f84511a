"""Do two checkpoints fail the same push scenes? Pairwise overlap of the failure probe's per-scene outcomes.

Usage: ``python -m research.push_outcome_overlap REPORT.json REPORT.json [...] [--json FILE]``

Each report is a ``research.push_failures --json`` file over the same scenes (same ``--seed`` and ``--episodes``).
For each pair: scenes both push successfully, scenes only one does, and the count of joint successes expected if
the two succeeded independently of the scene (``n * p_a * p_b``). Joint successes near that count say a
checkpoint's success on a scene is closer to a coin flip than to a property of the scene (how far apart the
objects are, the direction): the failures come from the closed loop, not from hard scenes. The union is what
a perfect choice between the two per scene would push.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path


def outcomes(report: dict) -> dict[int, bool]:
    """Scene seed -> pushed successfully, from a ``push_failures`` report."""
    return {int(e["seed"]): e["outcome"] == "success" for e in report["per_episode"]}


def overlap(name_a: str, a: dict[int, bool], name_b: str, b: dict[int, bool]) -> dict:
    """One row: the pair's joint, exclusive and union successes and the joint count under independence."""
    if set(a) != set(b):
        raise ValueError(f"{name_a} and {name_b} cover different scenes: run push_failures with the same "
                         "--seed and --episodes")
    n = len(a)
    both = sum(a[s] and b[s] for s in a)
    return {"a": name_a, "b": name_b, "scenes": n, "success_a": sum(a.values()), "success_b": sum(b.values()),
            "both": both, "only_a": sum(a[s] and not b[s] for s in a), "only_b": sum(b[s] and not a[s] for s in a),
            "both_if_independent": round(sum(a.values()) * sum(b.values()) / n, 1),
            "union": sum(a[s] or b[s] for s in a)}


def main(argv=None) -> list[dict]:
    """Print the pairwise table; return its rows."""
    from vla_ros.reporting import format_table, write_json

    parser = argparse.ArgumentParser(prog="python -m research.push_outcome_overlap",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="push_failures --json reports over the same scenes (two or more)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    if len(args.reports) < 2:
        parser.error("give at least two reports")
    loaded = {Path(path).stem.removeprefix("push_failures_"): outcomes(json.loads(Path(path).read_text()))
              for path in args.reports}
    rows = [overlap(a, loaded[a], b, loaded[b]) for a, b in itertools.combinations(loaded, 2)]
    print(format_table(rows, list(rows[0])))
    if args.json:
        write_json(args.json, {"reports": args.reports, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
