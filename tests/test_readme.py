"""The README is a front page: its figures come from the shipped reports, and its quick start is what CI runs."""

import re
from pathlib import Path

from vla_ros.commands.figures import readme_block, render
from vla_ros.paths import share_path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_figures_match_the_shipped_reports():
    readme = (ROOT / "README.md").read_text()
    block = readme_block(readme)
    assert block is not None, "README.md has no generated figures block"
    assert block == render(share_path()), "README figures differ from the reports: run `vla-ros figures --write`"


def test_readme_is_a_front_page_whose_quick_start_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.split()) < 1400
    quick_start = readme.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^bash (\S+)", quick_start, flags=re.M)
    assert commands == ["scripts/demo.sh", "scripts/test.sh"]
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    for link in re.findall(r"\]\(([^)#]+)\)", readme):  # every linked file exists
        assert (ROOT / link).exists(), link


def test_the_figures_check_fails_on_a_deliberately_edited_figure(tmp_path, capsys):
    from vla_ros.cli import main

    readme = (ROOT / "README.md").read_text()
    copy = tmp_path / "README.md"
    copy.write_text(readme)
    assert main(["figures", "--check", "--readme", str(copy)]) == 0
    block = readme_block(readme)
    edited = re.sub(r"\d+\.\d%", "12.3%", block, count=1)  # one figure changed by hand
    assert edited != block
    copy.write_text(readme.replace(block, edited))
    assert main(["figures", "--check", "--readme", str(copy)]) == 1
    assert "differs from the reports" in capsys.readouterr().out
    assert main(["figures", "--write", "--readme", str(copy)]) == 0
    assert copy.read_text() == readme
