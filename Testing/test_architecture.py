"""The engine's shape, checked so it cannot rot: stage packages that import only downwards, no
import cycle inside any package, no private name used across packages, small files.

The import rules themselves live in ``pyproject.toml`` ([tool.importlinter]) and are checked by
import-linter, whose graph (grimp) counts imports inside functions as well."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "MedTransferLib"
MAX_ENGINE_LINES = 350
MAX_MODULE_FILE_LINES = 150


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]


def test_import_contracts_are_kept():
    from importlinter.cli import lint_imports

    sys.path.insert(0, str(ROOT))
    try:
        rc = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True)
    finally:
        sys.path.remove(str(ROOT))
    assert rc == 0, "lint-imports found a broken contract: run `lint-imports` for the details"


def test_every_stage_package_is_in_the_layers_contract():
    """A new package outside the layers would escape the one-way rule unnoticed."""
    layers = next(c for c in _contracts() if c["type"] == "layers")["layers"]
    named = {name.strip() for layer in layers for name in layer.split("|")}
    packages = {p.parent.name for p in ENGINE.glob("*/__init__.py")}
    assert packages == named
    flat = sorted(p.name for p in ENGINE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert flat == [], f"modules outside the stage packages: {flat}"


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def private_reach_ins(source: str, module: str) -> list[str]:
    """Names starting with one underscore that ``module`` takes from another stage package,
    by ``from X import _name`` or as ``alias._name`` on a module imported from there."""
    tree = ast.parse(source)
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("MedTransferLib"):
            for a in node.names:
                target = f"{node.module}.{a.name}"
                if a.name.startswith("_") and not a.name.startswith("__") and _stage(node.module) != _stage(module):
                    found.append(target)
                aliases[a.asname or a.name] = target
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("MedTransferLib") and a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")
                and _stage(aliases[node.value.id]) != _stage(module)):
            found.append(f"{aliases[node.value.id]}.{node.attr}")
    return found


def test_the_private_name_check_finds_both_forms():
    src = ("from MedTransferLib.training.strategies import _BN\n"
           "from MedTransferLib.data import histogram as h\n"
           "x = h._landmarks\n"
           "from MedTransferLib.data.histogram import _fine_here\n")
    assert private_reach_ins(src, "MedTransferLib.shift.ood") == [
        "MedTransferLib.training.strategies._BN", "MedTransferLib.data.histogram._fine_here",
        "MedTransferLib.data.histogram._landmarks"]
    assert private_reach_ins(src, "MedTransferLib.data.io") == ["MedTransferLib.training.strategies._BN"]


def test_no_private_name_is_used_across_stage_packages():
    found = {}
    for path in ENGINE.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        hits = private_reach_ins(path.read_text(encoding="utf-8"), module)
        if hits:
            found[module] = hits
    assert found == {}


def test_engine_files_stay_small_and_the_module_file_thin():
    long = {str(p.relative_to(ROOT)): n for p in ENGINE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_ENGINE_LINES}
    assert long == {}
    module_file = ROOT / "MedTransfer" / "MedTransfer.py"
    assert len(module_file.read_text(encoding="utf-8").splitlines()) <= MAX_MODULE_FILE_LINES
