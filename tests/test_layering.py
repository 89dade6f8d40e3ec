"""The package's import graph: stages never import the CLI, data never imports training, no cycles.

Every `import` / `from ... import` of a `longpo` module anywhere in a file counts (module level and
inside functions), read from the source with `ast`, so a lazy import cannot hide an edge.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "longpo"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the longpo modules it imports (`from longpo.x import y` counts as longpo.x.y when that
    is a module, else longpo.x)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.split(".")[0] == "longpo"}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "longpo":
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    edges.add(sub if sub in files else node.module)
        graph[name] = {e for e in edges if e in files and e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_only_the_cli_imports_the_cli():
    importers = sorted(m for m, edges in import_graph().items() if "longpo.cli" in edges)
    assert importers == [], f"modules importing longpo.cli (stages must not parse argv): {importers}"


def test_data_stage_does_not_import_training():
    graph = import_graph()
    bad = {m: sorted(e for e in edges if e.startswith("longpo.train")) for m, edges in graph.items()
           if m.startswith("longpo.data")}
    assert not any(bad.values()), f"data modules importing the training package: {bad}"


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 30, f"found only {len(graph)} modules under {PACKAGE}"
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_cycle_finder_finds_a_cycle():
    """The checker itself can fail: a -> b -> c -> a is reported."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_engine_does_not_import_the_toy():
    """The toy is a user of the engine: its tiny run and eval task come in through `BUILT_RUNS` and
    `TASK_SUITES` (registered by longpo/demo/extensions.py), so only the demo (and the toy itself) import it."""
    graph = import_graph()
    importers = sorted(m for m, edges in graph.items() if any(e.startswith("longpo.toy") for e in edges)
                       and not m.startswith(("longpo.toy", "longpo.demo")))
    assert importers == [], f"modules outside longpo/demo importing the toy: {importers}"
    engine = [m for m in graph if m.startswith(("longpo.train", "longpo.eval", "longpo.data", "longpo.backends"))]
    assert len(engine) > 20, f"found only {len(engine)} engine modules"


def test_stages_do_not_compare_backend_names():
    """Stages ask a backend's spec (longpo.backends.BACKENDS), never its name."""
    import re

    names = re.compile(r"""(==|!=|\bin)\s*\(?["'](hf|vllm|openai)["']|["'](hf|vllm|openai)["']\s*(==|!=)""")
    hits = [f"{p.relative_to(PACKAGE.parent)}:{i}" for p in PACKAGE.rglob("*.py")
            if "backends" not in p.parts
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if names.search(line)]
    assert hits == [], f"backend-name comparisons outside longpo/backends: {hits}"
