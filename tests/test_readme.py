"""The README's two commands are what CI runs, and its examples match the code."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_exactly_the_readme_install_and_test_commands():
    readme = (REPO / "README.md").read_text()
    blocks = bash_blocks(readme)
    install, test = blocks[0], blocks[1]
    assert "pip install" in install and "examples/embed_pair.py" in install
    assert test == "python -m pytest"
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci_lines == [install, test]
