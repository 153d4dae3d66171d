"""README.md: a newcomer's first two commands, and daily-use commands that work as typed."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "README.md").read_text()


def test_readme_starts_with_make_demo_and_make_test():
    first_block = re.search(r"```bash\n(.*?)```", TEXT, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    assert TEXT.index("```bash") < TEXT.index("## ")                 # before any section


def test_daily_use_says_how_to_get_the_projects_python():
    daily = TEXT[TEXT.index("## Daily use"):TEXT.index("## Documentation")]
    uses_python = re.findall(r"`(python [^`]+)`", daily)
    assert uses_python, "the daily-use table lists python commands"
    assert ". .venv/bin/activate" in daily and daily.index(". .venv/bin/activate") < daily.index("| what |")
    for command in uses_python:                                         # each names an existing script
        assert (ROOT / command.split()[1]).exists(), command
