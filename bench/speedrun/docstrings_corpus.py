"""Build a local prose corpus from the docstrings of Python's own standard library (no network).

One JSON line per stdlib module: {"text": module docstring + class/function docstrings, in source order}.
Usage: python bench/speedrun/docstrings_corpus.py OUT.jsonl   then   lmsprint prepare --dataset OUT.jsonl
"""

import ast
import json
import sys
import sysconfig
from pathlib import Path


def module_text(path: Path) -> str:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 40:
                head = "" if isinstance(node, ast.Module) else f"{node.name}: "
                parts.append(head + doc.strip())
    return "\n\n".join(parts)


def main(out: str) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    n = 0
    with open(out, "w", encoding="utf-8") as fh:
        for path in sorted(stdlib.rglob("*.py")):
            rel = path.relative_to(stdlib).parts
            if rel[0] in ("site-packages", "test", "idlelib", "lib2to3") or "tests" in rel:
                continue
            text = module_text(path)
            if len(text) > 200:
                fh.write(json.dumps({"text": text}) + "\n")
                n += 1
    print(f"{n} modules -> {out}")


if __name__ == "__main__":
    main(sys.argv[1])
