"""``qt.QUiLoader``: loads a Designer .ui file into real Qt widgets.

Slicer's QUiLoader creates CTK and qMRML widgets from its designer plugins; here PyQt5's
``uic`` builds the standard widgets and the stand-ins of :mod:`.widgets` (registered as the
modules their ``<header>`` names). ``uic`` connects ``<connections>`` only between signals it
can type; the .ui's ``mrmlSceneChanged(vtkMRMLScene*)`` → ``setMRMLScene(vtkMRMLScene*)`` is
therefore wired here by name, as Qt's own loader does.
"""

from __future__ import annotations

import io
import sys
import types
import xml.etree.ElementTree as ET

from PyQt5 import uic

from . import widgets
from .pythonqt import unwrap, wrap


def _register_headers(root) -> None:
    for cw in root.iter("customwidget"):
        cls, header = cw.findtext("class"), cw.findtext("header") or ""
        module_name = header[:-2] if header.endswith(".h") else header
        if cls not in widgets.CLASSES:
            raise RuntimeError(f"the .ui uses {cls}, which has no stand-in in slicer_harness.widgets")
        module = sys.modules.get(module_name) or types.ModuleType(module_name)
        setattr(module, cls, widgets.CLASSES[cls])
        sys.modules[module_name] = module


class QUiLoader:
    def load(self, qfile, parent=None):
        data = bytes(unwrap(qfile).readAll())
        root = ET.fromstring(data)
        _register_headers(root)
        connections = root.find("connections")
        if connections is not None:
            root.remove(connections)
        top = uic.loadUi(io.BytesIO(ET.tostring(root)))
        if connections is not None:
            for conn in connections.iter("connection"):
                sender = top if conn.findtext("sender") == top.objectName() else getattr(top, conn.findtext("sender"))
                receiver = top if conn.findtext("receiver") == top.objectName() else getattr(top, conn.findtext("receiver"))
                signal = conn.findtext("signal").split("(")[0]
                slot = conn.findtext("slot").split("(")[0]
                getattr(sender, signal).connect(getattr(receiver, slot))
        return wrap(top)
