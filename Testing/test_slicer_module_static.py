"""What the behavioural harness cannot reach by running: code paths no test drives still name only
widgets that exist, every MRML selector gets the scene, and the install lists agree with the
package's dependencies."""

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import tomllib

from MedTransferLib.core import environment

ROOT = Path(__file__).resolve().parents[1]
UI = ROOT / "MedTransfer" / "Resources" / "UI" / "MedTransfer.ui"
WIDGET = ROOT / "MedTransferLib" / "slicer" / "widget.py"


def test_widget_code_only_names_widgets_that_exist_in_the_ui():
    names = {w.get("name") for w in ET.parse(UI).getroot().iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", WIDGET.read_text(encoding="utf-8")))
    used |= set(re.findall(r'"(\w+(?:Button|Box|Widget|Edit|Selector|Label|Bar))"', WIDGET.read_text(encoding="utf-8")))
    assert len(used) > 20
    assert used <= names, f"not in MedTransfer.ui: {sorted(used - names)}"


def test_ui_declares_its_custom_widgets_and_gives_every_mrml_widget_the_scene():
    root = ET.parse(UI).getroot()
    custom = {c.find("class").text for c in root.iter("customwidget")}
    for w in root.iter("widget"):
        assert w.get("class").startswith("Q") or w.get("class") in custom, w.get("name")
    receivers = {c.find("receiver").text for c in root.iter("connection")}
    combos = {w.get("name") for w in root.iter("widget")
              if w.get("class").startswith("qMRML") and w.get("class") != "qMRMLWidget"}
    assert combos and combos <= receivers, f"MRML widgets without a scene: {combos - receivers}"


def test_install_lists_are_the_package_dependencies():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    deps = sorted(d.split("#")[0].strip() for d in deps)
    assert deps == sorted(environment.TORCH_REQUIREMENTS + environment.REQUIREMENTS)
    assert set(environment.KEEP) >= {"torch", "torchvision", "numpy", "SimpleITK"}
