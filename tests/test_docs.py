"""The documentation site: its CLI reference is what `longpo <name> --help` prints.

docs/hooks/cli_reference.py fills docs/cli.md at build time by calling `longpo.cli.main([name,
"--help"])`; these tests check that page text against the installed command run as a process (the
text a user reads in a terminal), for every stage and command. The site build itself
(`mkdocs build --strict`) runs in .ci/run.
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from longpo.cli import COMMANDS, STAGES

ROOT = Path(__file__).resolve().parent.parent


def load_hook():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "docs" / "hooks" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def page_sections() -> dict[str, str]:
    """The generated page: heading `longpo NAME` -> the text of its code block."""
    hook = load_hook()
    page = (ROOT / "docs" / "cli.md").read_text()
    assert hook.MARKER in page, f"docs/cli.md lost its marker {hook.MARKER!r}: the hook would fill nothing"
    text = hook.on_page_markdown(page, page=None, config=None, files=None)
    found = re.findall(r"^## `(longpo[^`]*)`\n\n```text\n(.*?)\n```$", text, flags=re.S | re.M)
    return dict(found)


def test_the_page_has_a_section_for_every_stage_and_command():
    sections = page_sections()
    assert list(sections) == ["longpo"] + [f"longpo {name}" for name in [*STAGES, *COMMANDS]], list(sections)
    for title, text in sections.items():
        assert text.strip(), f"{title}: empty --help text on the page"


@pytest.mark.slow
def test_the_page_equals_what_longpo_help_prints():
    """One process per name (each imports its stage, about 10 s on 2 busy cores)."""
    sections = page_sections()
    for title, text in sections.items():
        argv = title.split()[1:] + ["--help"]
        run = subprocess.run([sys.executable, "-m", "longpo.cli", *argv], capture_output=True, text=True,
                             cwd=ROOT, timeout=300)
        printed = (run.stdout + run.stderr).rstrip("\n")
        assert text == printed, f"docs/cli.md section {title!r} differs from `{title} --help`"
