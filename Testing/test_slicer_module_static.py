"""Point 12: the Slicer module cannot run here (no Qt/Slicer app), so check it statically:
it compiles, follows the template's structure, and its widget code and parameter node agree
with the .ui file."""

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "MedTransfer" / "MedTransfer.py"
UI = ROOT / "MedTransfer" / "Resources" / "UI" / "MedTransfer.ui"


def _tree():
    return ast.parse(MODULE.read_text(encoding="utf-8"), filename=str(MODULE))


def _ui_widgets():
    root = ET.parse(UI).getroot()
    names = {w.get("name") for w in root.iter("widget")}
    bound = {}
    for w in root.iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[w.get("name")] = prop.find("string").text
    return names, bound


def _parameter_annotations() -> dict:
    for node in _tree().body:
        if isinstance(node, ast.ClassDef) and node.name == "MedTransferParameterNode":
            return {s.target.id: ast.unparse(s.annotation) for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no MedTransferParameterNode class")


def _parameter_fields():
    return set(_parameter_annotations())


# which annotation Slicer's parameterNodeWrapper GUI connectors accept for each widget class
CONNECTABLE = {"qMRMLNodeComboBox": r"^vtkMRML\w+Node$", "QCheckBox": r"^bool$",
               "QSpinBox": r"^(int|Annotated\[int,.*)$", "QComboBox": r"^Annotated\[str, Choice\(",
               "ctkPathLineEdit": r"^pathlib\.Path$"}


def test_module_has_the_template_classes():
    classes = {n.name: n for n in _tree().body if isinstance(n, ast.ClassDef)}
    assert {"MedTransfer", "MedTransferParameterNode", "MedTransferWidget", "MedTransferLogic",
            "MedTransferTest"} <= set(classes)
    decorators = [d.id for d in classes["MedTransferParameterNode"].decorator_list if isinstance(d, ast.Name)]
    assert decorators == ["parameterNodeWrapper"]
    logic_methods = {f.name for f in classes["MedTransferLogic"].body if isinstance(f, ast.FunctionDef)}
    assert {"train", "predict", "getParameterNode"} <= logic_methods


def test_widget_code_only_uses_widgets_that_exist_in_the_ui():
    names, _ = _ui_widgets()
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text(encoding="utf-8")))
    assert used, "the widget refers to no ui element"
    assert used <= names, f"not in MedTransfer.ui: {sorted(used - names)}"


def test_every_parameter_is_bound_to_a_widget_and_every_binding_is_a_parameter():
    _, bound = _ui_widgets()
    fields = _parameter_fields()
    assert set(bound.values()) <= fields, f"unknown parameters in .ui: {set(bound.values()) - fields}"
    assert fields <= set(bound.values()), f"parameters with no widget: {fields - set(bound.values())}"


def test_each_bound_widget_can_represent_its_parameter_type():
    root = ET.parse(UI).getroot()
    classes = {w.get("name"): w.get("class") for w in root.iter("widget")}
    _, bound = _ui_widgets()
    annotations = _parameter_annotations()
    for widget, field in bound.items():
        pattern = CONNECTABLE.get(classes[widget])
        assert pattern, f"{widget}: no parameter connector for {classes[widget]}"
        assert re.match(pattern, annotations[field]), f"{widget} ({classes[widget]}) cannot show {field}: {annotations[field]}"


def test_only_the_widget_imports_qt():
    """The Logic (the console API, driven by the runner without Qt) and module import time never
    import Qt; the widget may, for its timer."""
    source = MODULE.read_text(encoding="utf-8")
    compile(source, str(MODULE), "exec")
    tree = ast.parse(source)

    def qt_imports(node):
        return [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))
                and any((a.name if isinstance(n, ast.Import) else (n.module or "")).split(".")[0] == "qt"
                        for a in n.names)]

    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not qt_imports(ast.Module(body=top, type_ignores=[]))
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    assert not qt_imports(classes["MedTransferLogic"])
    assert qt_imports(classes["MedTransferWidget"])       # the timer that polls the child process


def test_extension_cmake_declares_pytorch_dependency_and_module():
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in top
    assert "add_subdirectory(MedTransfer)" in top
    module = (ROOT / "MedTransfer" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule" in module and "MedTransferLib" in module
    for res in re.findall(r"Resources/\S+", module):
        res = res.replace("${MODULE_NAME}", "MedTransfer")
        assert (ROOT / "MedTransfer" / res).is_file(), res
