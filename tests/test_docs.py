"""The README documents what the code does: every failure reason, the set-up commands."""
from pathlib import Path

from exporter import docs
from exporter.failures import REASONS

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_readme_failure_table_lists_every_reason_with_its_meaning() -> None:
    for name, reason in REASONS.items():
        rows = [line for line in README.splitlines() if line.startswith("|") and f"| `{name}` |" in line]
        assert len(rows) == 1, f"{name} must have exactly one row in the README's failure table"


def test_readme_tables_are_generated_from_the_prober_registry() -> None:
    assert docs.render(README) == README, "README tables are stale: run `python -m exporter.docs README.md`"
    for name in ("phases", "reasons"):
        assert f"<!-- generated:{name} -->" in README


def test_readme_setup_is_exactly_make_run_and_make_test() -> None:
    setup = README.split("## Set-up", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in setup.strip().splitlines()]
    assert commands == ["make run", "make test"]
