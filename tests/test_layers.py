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


def test_modules_imported_by_name_are_few_and_in_their_layer():
    """`importlib.import_module` (which the AST check above cannot follow) only in the package root (the lazy API)
    and the CLI's dispatcher, and the dispatcher only reaches modules of the cli package."""
    from lmsprint.cli import COMMANDS
    from lmsprint.cli.arguments import PRINT_CONFIG

    users = {m for m, p in ALL if "import_module" in p.read_text()}
    assert users <= {"lmsprint.__init__", "lmsprint.cli.__init__"}, users
    for target in [t for _, _, t in COMMANDS.values()] + [PRINT_CONFIG]:
        module, function = target.split(":")
        assert module.startswith("lmsprint.cli.") and function.isidentifier(), target
        assert (SRC / "cli" / f"{module.rsplit('.', 1)[1]}.py").is_file(), target


# what the CLI's parse path must never import: the training stack and the heavy libraries under it
HEAVY = ("torch", "numpy", "scipy", "matplotlib", "tiktoken", "transformers", "datasets", "lmsprint.training.trainer",
         "lmsprint.model", "lmsprint.data.tokenizer", "lmsprint.api")
LIGHT_SCRIPT = """
import sys
from lmsprint.cli import main
for argv in (["--version"], ["train", "--help"], ["train", "--help-all"], ["train", "--help", "optimizer"],
             ["eval", "--help"], ["bench", "--help"], ["train", "--config_format", "demo", "--print_config"]):
    try:
        main(argv)
    except SystemExit:
        pass
heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY_ROOTS or m in HEAVY)
print("HEAVY:", ",".join(heavy))
"""


def test_help_version_and_print_config_import_no_torch(tmp_path):
    """`lmsprint train --help`, `--version` and `--print_config` answer without the training stack (issue: help in a
    second): the parse path is the config package and cli/arguments.py, the commands' modules load when they run."""
    import subprocess
    import sys

    roots = tuple(h for h in HEAVY if "." not in h)
    code = f"HEAVY = {HEAVY!r}\nHEAVY_ROOTS = {roots!r}\n" + LIGHT_SCRIPT
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "HEAVY:", p.stdout.splitlines()[-1]
    assert "config_format: demo" in p.stdout and list(tmp_path.iterdir()) == []
