"""Stand-ins for ``slicer.ScriptedLoadableModule`` and ``slicer.i18n``, following Slicer's
Base/Python/slicer/ScriptedLoadableModule.py:

- ``ScriptedLoadableModule(parent)`` resets the parent's title, categories, contributors, help
  and acknowledgement, and registers ``runTest`` in ``slicer.selfTests``; ``resourcePath`` is
  ``<folder of parent.path>/Resources/<file>``.
- ``ScriptedLoadableModuleWidget(parent)`` takes ``parent.layout()`` as ``self.layout``;
  ``setup()`` adds the developer section (only in developer mode, off here); ``cleanup()`` does
  nothing; ``resourcePath`` goes through ``slicer.util.modulePath``.
- ``ScriptedLoadableModuleLogic.getParameterNode()`` returns the scene's singleton
  ``vtkMRMLScriptedModuleNode`` tagged with the module name, creating it on first use, exactly
  as Slicer does (a real MRML node of slicer-core).
- ``ScriptedLoadableModuleTest`` is a ``unittest.TestCase`` with ``delayDisplay`` logging.
"""

from __future__ import annotations

import logging
import os
import unittest

import slicer


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent
        self.moduleName = self.__class__.__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = []
        parent.helpText = ""
        parent.acknowledgementText = ""
        if not hasattr(slicer, "selfTests"):
            slicer.selfTests = {}
        slicer.selfTests[self.moduleName] = self.runTest

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(self.parent.path), "Resources", filename)

    def runTest(self, msec=100, **kwargs):
        import importlib

        module = importlib.import_module(self.__module__)
        test = getattr(module, self.moduleName + "Test")()
        test.messageDelay = msec
        test.runTest(**kwargs)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Widget"):
            self.moduleName = self.moduleName[:-6]
        self.developerMode = False
        self.parent = parent
        self.layout = self.parent.layout()

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(slicer.util.modulePath(self.moduleName)), "Resources", filename)

    def setup(self):
        pass   # the developer section (Reload & Test) is shown only in developer mode

    def cleanup(self):
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Logic"):
            self.moduleName = self.moduleName[:-5]
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node:
            if node.GetAttribute("ModuleName") != self.moduleName:
                node.SetAttribute("ModuleName", self.moduleName)
            return node
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        return slicer.mrmlScene.AddNode(node)


class ScriptedLoadableModuleTest(unittest.TestCase):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.messageDelay = 100

    def delayDisplay(self, message, requestedDelay=None, msec=None):
        logging.info(message)

    def runTest(self):   # overridden by the module's test
        pass


def tr(text):
    return text


def translate(context, text):
    return text
