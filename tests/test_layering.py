"""The architecture, read from the imports: `core` is shared and imports neither side; the jobs (`worker`) never
import the web app (`shopify_app`); the web reaches the jobs only through `worker.tasks` (the enqueue functions)
and the Celery app it binds."""

import ast
from pathlib import Path

from core.config import ROOT

WEB_MAY_USE = {"worker.tasks", "worker.celery_app"}


def imports(package: str) -> dict[str, set[str]]:
    """Every module a package's files import (relative imports resolved), by file."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        parent = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = parent.rsplit(".", node.level - 1)[0] if node.level > 1 else parent
                target = f"{base}.{node.module}" if node.level and node.module else base if node.level else node.module
                names |= {target} | {f"{target}.{alias.name}" for alias in node.names}
        found[str(path.relative_to(ROOT))] = names
    return found


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_core_imports_neither_the_web_app_nor_the_jobs():
    offenders = {file: sorted(n for n in names if within(n, "shopify_app") or within(n, "worker"))
                 for file, names in imports("core").items()}
    assert not {f: n for f, n in offenders.items() if n}


def test_the_jobs_never_import_the_web_app():
    offenders = {file: sorted(n for n in names if within(n, "shopify_app"))
                 for file, names in imports("worker").items()}
    assert not {f: n for f, n in offenders.items() if n}


def test_the_web_app_reaches_the_jobs_only_through_the_enqueue_functions():
    offenders = {file: sorted(n for n in names if within(n, "worker") and n != "worker"
                              and not any(within(n, allowed) for allowed in WEB_MAY_USE))
                 for file, names in imports("shopify_app").items()}
    assert not {f: n for f, n in offenders.items() if n}


def test_the_import_reader_sees_relative_and_absolute_imports():
    """The rules above would pass vacuously if the reader missed imports: check it on a known file."""
    found = imports("worker")[str(Path("worker") / "pipeline.py")]
    assert {"core.recommendations", "worker.training", "worker.evaluation.leave_one_out"} <= found
