"""The package's imports flow one way (issue: one-way structure), checked from the source with `ast`.

Layers, lowest first; a module may import its own layer's siblings or anything below, never above:
errors/files/keys/version -> hw -> config -> model/data/optim -> rundir -> export/evals -> training -> track/bench ->
cli/api -> the package root.
Imports inside functions are allowed only for optional third-party packages, never for lmsprint's own modules.
"""

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "lmsprint"

LAYERS = [
    {"errors", "files", "keys", "version"},
    {"hw"},
    {"config"},
    {"model", "data", "optim"},
    {"rundir"},
    {"export", "evals"},
    {"training"},
    {"track", "bench"},
    {"cli", "api"},
    {"__init__", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
# sibling packages of one layer that may import each other in this direction only
ALLOWED_SIDEWAYS = {("optim", "model"), ("evals", "export"), ("files", "errors")}


def _top(module: str) -> str:
    """'lmsprint.training.step' -> 'training'."""
    return module.split(".")[1] if module.count(".") else "__init__"


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        yield ".".join(rel.parts), path


def _imports(module: str, path: pathlib.Path):
    """(imported lmsprint module, line, inside a function?) for every import of lmsprint code in the file."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inner = {id(n) for f in funcs for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] if node.module or not node.level else [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name == "lmsprint" or name.startswith("lmsprint."):
                yield name, node.lineno, id(node) in inner


ALL = list(_modules())


@pytest.mark.parametrize("module,path", ALL, ids=[m for m, _ in ALL])
def test_imports_flow_down(module, path):
    mine = _top(module)
    assert mine in RANK, f"{module}: add its package to LAYERS in this test"
    for target, line, inside in _imports(module, path):
        assert not inside, f"{module}:{line} imports {target} inside a function"
        theirs = _top(target)
        if theirs == mine:
            continue
        assert theirs in RANK, f"{module}:{line} imports unknown {target}"
        ok = RANK[theirs] < RANK[mine] or (mine, theirs) in ALLOWED_SIDEWAYS
        assert ok, f"{module}:{line} imports {target}: {theirs} is not below {mine}"


def test_no_import_cycles_between_modules():
    graph = {m: {t for t, _, _ in _imports(m, p)} for m, p in ALL}
    graph = {m: {t for t in ts if t in graph} for m, ts in graph.items()}
    state: dict = {}

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [m])
