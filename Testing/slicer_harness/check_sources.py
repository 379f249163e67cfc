"""Check the harness's stand-ins against Slicer's and CTK's own source.

Every property, method and signal the stand-in widgets offer (widgets.SOURCES), and every
parameterNodeWrapper / ScriptedLoadableModule / slicer.packaging / PyTorchUtils name the module
relies on (OTHER below), must be declared in the named file of the real project. Needs no Qt and
no network, only checkouts (a working tree or a bare git repository)::

    python Testing/slicer_harness/check_sources.py --slicer PATH/Slicer --ctk PATH/CTK --pytorch PATH/SlicerPyTorch

Run it when Slicer or CTK changes; CI has no checkout of them, so it is not a test.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OTHER = {
    "slicer": {
        "Base/Python/slicer/ScriptedLoadableModule.py": [
            "class ScriptedLoadableModule:", "def resourcePath(self, filename):", "self.layout = self.parent.layout()",
            "def getParameterNode(self):", "GetSingletonNode(self.moduleName", "class ScriptedLoadableModuleTest(unittest.TestCase):"],
        "Base/Python/slicer/parameterNodeWrapper/wrapper.py": [
            'SlicerParameterNamePropertyName = "SlicerParameterName"', "def _connectGui(self, gui):",
            "for widget in gui.__dict__.values():", "def _disconnectGui(self, guiTag):"],
        "Base/Python/slicer/parameterNodeWrapper/serializers.py": [
            "class PathSerializer", "return self.type()", 'parameterNode.SetParameter(name, "True" if value else "False")',
            "def _lenName(self, name):"],
        "Base/Python/slicer/parameterNodeWrapper/guiConnectors.py": [
            'self._widget.minimum = float("-inf")', "self._widget.nodeTypes = getNodeTypes(datatype)",
            "ComboBoxToStringableConnector requires the Choice annotation"],
        "Base/Python/slicer/parameterNodeWrapper/validators.py": [
            "class WithinRange(Validator):", "class Choice(Validator):"],
        "Base/Python/slicer/packaging.py": [
            "def pip_ensure(", "constraints: str | Path | None = None", "prompt_install: bool = True",
            "requester: str | None = None", "def pip_install("],
        "Modules/Loadable/Plots/Logic/vtkSlicerPlotsLogic.cxx": [
            "void vtkSlicerPlotsLogic::ShowChartInLayout", "SetActivePlotChartID"],
    },
    "pytorch": {
        "PyTorchUtils/PyTorchUtils.py": [
            "def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None, "
            "torchvisionVersionRequirement=None):", "class PyTorchUtilsLogic"],
    },
}


def _reader(root: str):
    path = Path(root)
    if (path / "HEAD").is_file() and (path / "objects").is_dir():   # a bare repository
        return lambda rel: subprocess.run(["git", "--git-dir", str(path), "show", f"HEAD:{rel}"],
                                          capture_output=True, text=True, check=True).stdout
    return lambda rel: (path / rel).read_text(encoding="utf-8")


def main(argv=None) -> int:
    from slicer_harness.sources import SOURCES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slicer", required=True)
    ap.add_argument("--ctk", required=True)
    ap.add_argument("--pytorch", help="SlicerPyTorch checkout (optional)")
    a = ap.parse_args(argv)
    readers = {"slicer": _reader(a.slicer), "ctk": _reader(a.ctk)}
    if a.pytorch:
        readers["pytorch"] = _reader(a.pytorch)
    checks = [("ctk" if cls.startswith("ctk") else "slicer", header, names) for cls, (header, names) in SOURCES.items()]
    checks += [(project, f, names) for project, files in OTHER.items() for f, names in files.items()]
    missing = []
    for project, rel, names in checks:
        if project not in readers:
            continue
        text = readers[project](rel)
        missing += [f"{project}:{rel}: {n}" for n in names if n not in text]
    for m in missing:
        print("not found:", m)
    print(f"{sum(len(n) for p, _, n in checks if p in readers)} declarations checked, {len(missing)} not found")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
