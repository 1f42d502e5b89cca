"""The package's folders are its stages, and imports between them go one way.

    base modules  (settings, errors, counters, redact, logs, files, platform, flags, version)
        ^
    results       (osquery's lines: walked, counted, made into records)
        ^
    spool         (stage 2)          <- osquery (stage 1)       <- ops (the operator's tools)
        ^                                                            |
    delivery      (stage 3)  <-----------------------------------------
    extension, cli: the application, which puts the stages together

Read from the source (every import, TYPE_CHECKING ones too), so a new import that breaks the
direction fails here, not in a reviewer's eye."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "osquery_aws_logger"
BASE = {"settings", "errors", "counters", "redact", "logs", "files", "platform", "flags", "version"}
APP = {"extension", "cli", "__main__", "__init__"}
STAGES = {"results", "spool", "osquery", "delivery", "ops"}
#: What each stage may import, besides itself.
ALLOWED = {
    "base": {"base"},
    "results": {"base"},
    "spool": {"base"},
    "osquery": {"base", "results", "spool"},
    "delivery": {"base", "results", "spool"},
    "ops": {"base", "results", "spool", "osquery", "delivery"},
    "app": {"base", "results", "spool", "osquery", "delivery", "ops", "app"},
}


def stage(module: str) -> str:
    head = module.split(".", maxsplit=1)[0]
    if head in STAGES:
        return head
    if head in BASE:
        return "base"
    assert head in APP, f"{module}: a module outside every stage"
    return "app"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(module: str, path: Path, *, runtime: bool = False) -> set[str]:
    """The package's modules `module` imports (resolved relative imports, absolute ones); with
    `runtime`, not those only type checking imports (`if TYPE_CHECKING:`)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if module == "__init__":
        package = []
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                   for inner in ast.walk(node)} if runtime else set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and id(node) not in typing_only:
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("osquery_aws_logger"):
                target = node.module.removeprefix("osquery_aws_logger").lstrip(".")
            else:
                continue
            names = [target] if target else []
            names += [f"{target}.{alias.name}" if target else alias.name for alias in node.names]
            found.update(n for n in names if n in modules())
    return found - {module}


def test_every_import_between_stages_goes_the_one_allowed_way() -> None:
    wrong = []
    for module, path in modules().items():
        here = stage(module)
        for target in imports(module, path):
            there = stage(target)
            if there != here and there not in ALLOWED[here]:
                wrong.append(f"{module} ({here}) imports {target} ({there})")
    assert not wrong, "\n".join(wrong)


def test_the_modules_import_each_other_without_a_cycle_even_for_type_checking() -> None:
    graph = {module: imports(module, path) for module, path in modules().items()}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in graph[module]:
            if target.startswith(module + ".") or module.startswith(target + "."):
                continue  # a package and its own modules
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*trail, module, target]))
            if target not in state:
                visit(target, [*trail, module])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [])


def test_each_stage_says_what_it_owns_and_may_import() -> None:
    for name in STAGES:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text())) or ""
        assert "Owns:" in doc and "May import:" in doc, name
