"""The packaged recipes: the YAML files in this folder, found by name from anywhere.

    longpo train --config tiny                      # this folder's tiny.yaml
    longpo train --config runs/my.yaml              # a file path wins over a packaged name
    longpo recipes                                  # every recipe with its one-line description
    longpo recipes copy mistral-7b-128k my.yaml     # a copy to edit

A recipe's name is its path in this folder without the suffix (`tiny`, `accelerate/zero3`,
`deepspeed/zero3`); its description is the first paragraph of its header comment. The folder ships in
the wheel (pyproject `package-data`), so the names work from an installed package as from a
checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import textwrap
from pathlib import Path

from longpo.errors import InputError

HERE = Path(__file__).parent
SUFFIXES = (".yaml", ".yml", ".json")
# A packaged file or folder named in a recipe's body (accelerate/zero3.yaml -> its DeepSpeed JSON,
# eval_tiny.yaml -> the shipped toy model), written relative to a checkout's root so that the recipe
# also works in place from there.
PACKAGED_PATH = re.compile(r"longpo/(?:recipes|demo)/[\w./-]+")
ROOT = HERE.parent.parent  # the checkout's root, or site-packages for an installed wheel


class RecipeError(InputError):
    """A `--config` that is neither a file nor a packaged recipe, or a copy that cannot be made."""


def recipe_files() -> dict[str, Path]:
    """name -> path of every packaged recipe, sorted by name."""
    files = [p for p in HERE.rglob("*") if p.suffix in SUFFIXES and p.is_file()]
    return {p.relative_to(HERE).with_suffix("").as_posix(): p for p in sorted(files)}


def find(name: str) -> Path | None:
    """The packaged recipe called `name` (`tiny`, `tiny.yaml`, `accelerate/zero3`), or None."""
    files = recipe_files()
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix in SUFFIXES else name
    path = files.get(stem)
    return path if path is not None and (stem == name or path.name == Path(name).name) else None


def not_found(name: str) -> RecipeError:
    names = ", ".join(n for n, p in recipe_files().items() if p.suffix != ".json")
    return RecipeError(f"config {name} does not exist, and no packaged recipe has that name; "
                       f"packaged recipes: {names} (`longpo recipes` lists them with their descriptions)")


def resolve(value: str | os.PathLike) -> Path:
    """A `--config` value: an existing file as given, else the packaged recipe of that name."""
    path = Path(value)
    if path.is_file():
        return path
    packaged = find(str(value))
    if packaged is None:
        raise not_found(str(value))
    return packaged


def description(path: Path) -> str:
    """The first paragraph of the header comment, on one line; a JSON file (no comments) names the recipes using it."""
    if path.suffix == ".json":
        rel = path.relative_to(HERE.parent.parent).as_posix()
        users = [n for n, p in recipe_files().items() if p != path and rel in p.read_text(encoding="utf-8")]
        return f"{path.suffix[1:].upper()} file read by {', '.join(users) or 'no recipe'}"
    words: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.lstrip("#").strip()
        if not line.startswith("#") or (not text and words):
            break
        words += text.split()
    return " ".join(words) or "(no header comment)"


def listing(width: int = 100) -> str:
    """Every recipe with its whole description, wrapped to `width` columns under the description column."""
    files = recipe_files()
    indent = " " * (max(len(n) for n in files) + 4)
    lines = ["recipes (use a name with --config NAME; `longpo recipes copy NAME [DEST]` writes one out to edit):"]
    for name, path in files.items():
        lines += textwrap.wrap(description(path), width, initial_indent=f"  {name}".ljust(len(indent)),
                               subsequent_indent=indent, break_on_hyphens=False)
    return "\n".join(lines)


def copy(name: str, dest: str | os.PathLike | None = None) -> Path:
    """Write packaged recipe `name` to `dest` (a file, or a folder to put it in; default: here).

    A packaged file that the recipe names by its checkout path (`longpo/recipes/...`) is written as
    that file's absolute installed path, so the copy works from any folder. Never overwrites."""
    source = find(name)
    if source is None:
        raise not_found(name)
    target = Path(dest) if dest is not None else Path(source.name)
    if target.is_dir():
        target = target / source.name
    if target.exists():
        raise RecipeError(f"{target} exists; give another DEST or remove it first")
    target.parent.mkdir(parents=True, exist_ok=True)
    text = source.read_text(encoding="utf-8")
    lines = [line if line.lstrip().startswith("#") else
             PACKAGED_PATH.sub(lambda m: str(ROOT / m.group(0)) if (ROOT / m.group(0)).exists() else m.group(0), line)
             for line in text.splitlines(keepends=True)]
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    shutil.copymode(source, tmp)
    os.replace(tmp, target)
    return target


def installed_paths(values: object) -> object:
    """A packaged recipe's values with every `longpo/...` path the working folder lacks pointed at the
    installed package's copy (so `--config eval_tiny` finds the shipped toy model from any folder, and
    from a wheel as from a checkout)."""
    if isinstance(values, dict):
        return {k: installed_paths(v) for k, v in values.items()}
    if isinstance(values, list):
        return [installed_paths(v) for v in values]
    if (isinstance(values, str) and PACKAGED_PATH.fullmatch(values) and not Path(values).exists()
            and (ROOT / values).exists()):
        return str(ROOT / values)
    return values
