"""The Slicer module cannot run here (no Qt/Slicer app), so check it statically: it compiles,
follows the template's structure, its widget code, parameter node, Logic and .ui file agree,
and the extension's packaging (CMake metadata, requirements) is complete."""

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
               "QDoubleSpinBox": r"^(float|Annotated\[float,.*)$",
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


def _manually_synced() -> set:
    for node in _tree().body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "MANUALLY_SYNCED" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError("no MANUALLY_SYNCED tuple")


def _class(name):
    return next(n for n in _tree().body if isinstance(n, ast.ClassDef) and n.name == name)


def _methods(cls) -> set:
    return {f.name for f in cls.body if isinstance(f, ast.FunctionDef)}


def test_every_parameter_is_bound_to_a_widget_or_synchronised_by_the_widget_code():
    _, bound = _ui_widgets()
    fields = _parameter_fields()
    manual = _manually_synced()
    assert set(bound.values()) <= fields, f"unknown parameters in .ui: {set(bound.values()) - fields}"
    assert not manual & set(bound.values()), "a parameter is both bound and synchronised by hand"
    assert fields <= set(bound.values()) | manual, f"parameters with no widget: {fields - set(bound.values()) - manual}"
    widget_src = ast.unparse(_class("MedTransferWidget"))
    for field in manual:   # the widget writes each hand-synchronised parameter somewhere
        assert re.search(rf"(\bp|self\._parameterNode)\.{field} = ", widget_src), f"{field} is never written by the widget"


def test_the_widget_only_reads_parameters_that_exist():
    fields = _parameter_fields() | {"connectGui", "disconnectGui"}
    widget_src = ast.unparse(_class("MedTransferWidget"))
    used = set(re.findall(r"(?:\bp|self\._parameterNode)\.(\w+)", widget_src))
    assert used, "the widget reads no parameter"
    assert used <= fields, f"not parameters: {sorted(used - fields)}"


def test_signals_go_to_methods_that_exist_and_the_widget_calls_only_logic_methods_that_exist():
    widget = _class("MedTransferWidget")
    src = ast.unparse(widget)
    slots = set(re.findall(r"\.connect\('[^']+', self\.(\w+)\)", src))
    assert len(slots) >= 15, slots
    assert slots <= _methods(widget), f"missing slots: {slots - _methods(widget)}"
    logic_calls = set(re.findall(r"self\.logic\.(\w+)", src))
    logic = _methods(_class("MedTransferLogic")) | {"getParameterNode"}
    assert logic_calls <= logic, f"Logic lacks {logic_calls - logic}"


def test_ui_uses_only_qt_widgets_or_declared_custom_widgets():
    root = ET.parse(UI).getroot()
    custom = {c.find("class").text for c in root.iter("customwidget")}
    for w in root.iter("widget"):
        cls = w.get("class")
        assert cls.startswith("Q") or cls in custom, f"{w.get('name')}: {cls} is not declared"
    receivers = {c.find("receiver").text for c in root.iter("connection")}
    combos = {w.get("name") for w in root.iter("widget") if w.get("class").startswith("qMRML") and w.get("class") != "qMRMLWidget"}
    assert combos <= receivers, f"MRML widgets without a scene: {combos - receivers}"


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
    meta = dict(re.findall(r'set\((EXTENSION_\w+) "([^"]*)"\)', top))
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS", "STATUS"):
        assert meta.get(f"EXTENSION_{key}", "").strip(), f"EXTENSION_{key} is empty"
    repo_files = [u.split("/main/", 1)[1] for u in (meta["EXTENSION_ICONURL"] + " " + meta["EXTENSION_SCREENSHOTURLS"]).split()]
    assert len(repo_files) >= 3
    for f in repo_files:   # the URLs point at files this repository has
        assert (ROOT / f).is_file(), f
    module = (ROOT / "MedTransfer" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule" in module and "MedTransferLib" in module
    for res in re.findall(r"Resources/\S+", module):
        res = res.replace("${MODULE_NAME}", "MedTransfer")
        assert (ROOT / "MedTransfer" / res).is_file(), res


def test_requirements_file_mirrors_the_package_dependencies_minus_what_slicer_provides():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    req = ROOT / "MedTransfer" / "Resources" / "requirements.txt"
    listed = [ln.split("#")[0].strip() for ln in req.read_text(encoding="utf-8").splitlines()]
    listed = [ln for ln in listed if ln]
    expected = [d.split("#")[0].strip() for d in deps if not d.startswith(("torch", "torchvision"))]
    assert sorted(listed) == sorted(expected)
    module_cmake = (ROOT / "MedTransfer" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "Resources/requirements.txt" in module_cmake           # installed with the module
    source = MODULE.read_text(encoding="utf-8")
    assert '"requirements.txt"' in source and "pip_ensure" in source and "installTorch" in source
    # never at import time: only inside ensureDependencies
    tree = _tree()
    install_calls = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in ("pip_install", "pip_ensure", "installTorch")]
    logic = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MedTransferLogic")
    inside = {id(n) for n in ast.walk(logic)}
    assert install_calls and all(id(n) in inside for n in install_calls)
