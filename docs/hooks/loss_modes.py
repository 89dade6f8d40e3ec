"""MkDocs hook: fills the marker `<!-- loss-modes -->` (docs/stages/train.md) with a table of the
loss modes, read from the registry `longpo.train.losses.MODES` at build time, so the page lists
exactly the modes `longpo train --help` offers, with their defaults and formulas.
"""

from __future__ import annotations

MARKER = "<!-- loss-modes -->"


def render() -> str:
    from longpo.train.losses import MODES

    rows = ["| mode | reference | rejected answers | beta | lam | nll_weight | nll_mode | margin | per-pair loss |",
            "|---|---|---|---|---|---|---|---|---|"]
    for m in MODES.values():
        least, most = m.rejected
        rejected = "not used" if most == 0 else f"{least} or more (M)" if most is None else f"{least}-{most}"
        if m.preference:
            rejected += ": M pairs" if m.per_answer else ": one term"
        d = m.defaults
        formula = m.formula.replace("|", "\\|")
        rows.append(f"| `{m.name}` | {m.reference} | {rejected} | {d.beta:g} | {d.lam:g} | {d.nll_weight:g} | "
                    f"{d.nll_mode} | {d.margin:g} | {formula} |")
    sources = [f"- `{m.name}`: {m.summary}. Source: {m.source}." for m in MODES.values()]
    return "\n".join(rows) + "\n\n" + "\n".join(sources) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())
