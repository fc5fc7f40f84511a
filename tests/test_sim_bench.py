"""``vla-ros bench sim`` runs end to end (tiny sizes) and writes the shared report format."""

import json

from vla_ros.cli import main


def test_bench_sim_writes_rows_and_ratios(tmp_path, capsys):
    out = tmp_path / "bench_sim.json"
    assert main(["bench", "sim", "--steps", "5", "--sizes", "64", "--workers", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"machine", "rows", "ratios"}
    names = [row["name"] for row in report["rows"]]
    assert names == ["physics", "render_64"]
    for row in report["rows"]:
        assert row["device"] == "cpu" and row["per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
    assert "render_64/physics" in report["ratios"]
    assert "render_64" in capsys.readouterr().out
