"""MkDocs hook: fills docs/cli.md with what `longpo <stage> --help` prints, at build time.

The page holds the marker `<!-- cli-reference -->`; each stage of `longpo.cli.STAGES` and each
command of `longpo.cli.COMMANDS` gets a heading and its `--help` text, taken by calling
`longpo.cli.main([name, "--help"])` with stdout and stderr captured. That call is the stable
interface (the same text a user sees), so the page cannot drift from the CLI.
tests/test_docs.py checks the page against `longpo <name> --help` run as a process.
"""

from __future__ import annotations

import contextlib
import io

MARKER = "<!-- cli-reference -->"


def help_text(argv: list[str]) -> str:
    """What `longpo ARGV` prints (stdout, then stderr), without a trailing newline."""
    from longpo.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit:  # argparse's --help exits
            pass
    return (out.getvalue() + err.getvalue()).rstrip("\n")


def cli_names() -> list[str]:
    from longpo.cli import COMMANDS, STAGES

    return [*STAGES, *COMMANDS]


def render() -> str:
    """The generated part of the page: `longpo --help`, then one section per stage and command."""
    sections = [("longpo", ["--help"])] + [(f"longpo {name}", [name, "--help"]) for name in cli_names()]
    parts = []
    for title, argv in sections:
        text = help_text(argv)
        assert "```" not in text, f"`{title} --help` contains a code fence; the page cannot quote it"
        parts.append(f"## `{title}`\n\n```text\n{text}\n```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())
