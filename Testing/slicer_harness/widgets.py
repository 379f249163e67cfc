"""Stand-ins for the CTK and qMRML widgets MedTransfer.ui names, on real Qt widgets and the real
MRML scene of slicer-core.

Each one has only the properties, methods and signals the module (or Slicer's parameter-node
GUI connectors) uses. ``SOURCES`` names, for every one of them, the CTK or Slicer header that
declares it; ``check_sources.py`` verifies that list against a checkout of Slicer and CTK (run it
when either changes; it needs no Qt). Behaviour follows those sources:

- ``qMRMLNodeComboBox`` lists the scene's nodes of ``nodeTypes`` — subclasses only when
  ``showChildNodeTypes`` (else the exact class), minus ``hideChildNodeTypes``, minus nodes hidden
  from editors unless ``showHidden`` (qMRMLSortFilterProxyModel::filterAcceptsRow); with
  ``noneEnabled`` it starts at None, else at the first node; it follows nodes added to and
  removed from the scene.
- ``qMRMLCheckableNodeComboBox`` adds a check state per node and ``checkedNodesChanged()``.
- ``qMRMLWidget.setMRMLScene`` emits ``mrmlSceneChanged``, which the .ui connects to each
  selector's ``setMRMLScene``.

What only a real Slicer can confirm: drawing, the node menus (add / rename / delete), the
subject-hierarchy-aware ordering of nodes, and the attribute filters (not used here).
"""

from __future__ import annotations

from PyQt5 import QtCore, QtWidgets
from PyQt5.QtCore import pyqtProperty, pyqtSignal

from .sources import SOURCES  # noqa: F401  (what each stand-in follows, checked by check_sources.py)


class ctkCollapsibleButton(QtWidgets.QWidget):
    """A titled container that can collapse (a QAbstractButton in CTK; only its container role and
    ``text`` / ``collapsed`` matter here)."""

    contentsCollapsed = pyqtSignal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._text = ""
        self._collapsed = False

    def getText(self):
        return self._text

    def setText(self, text):
        self._text = text

    text = pyqtProperty(str, getText, setText)

    def isCollapsed(self):
        return self._collapsed

    def setCollapsed(self, value):
        self._collapsed = bool(value)
        self.contentsCollapsed.emit(self._collapsed)

    collapsed = pyqtProperty(bool, isCollapsed, setCollapsed)


class ctkPathLineEdit(QtWidgets.QWidget):
    """A path field (an editable combo box in CTK); ``currentPath`` and ``currentPathChanged``."""

    Dirs, Drives, Files = 0x001, 0x002, 0x004
    currentPathChanged = pyqtSignal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._edit = QtWidgets.QLineEdit(self)
        self._edit.textChanged.connect(self.currentPathChanged.emit)
        self._filters = self.Dirs | self.Files

    def getCurrentPath(self):
        return self._edit.text()

    def setCurrentPath(self, path):
        self._edit.setText(str(path))

    currentPath = pyqtProperty(str, getCurrentPath, setCurrentPath)

    def getFilters(self):
        return self._filters

    def setFilters(self, value):
        self._filters = int(value)

    filters = pyqtProperty(int, getFilters, setFilters)


class qMRMLWidget(QtWidgets.QWidget):
    mrmlSceneChanged = pyqtSignal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene):
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class qMRMLNodeComboBox(QtWidgets.QWidget):
    currentNodeChanged = pyqtSignal([object], [bool])
    currentNodeIDChanged = pyqtSignal(str)
    nodeAdded = pyqtSignal(object)
    nodeAboutToBeRemoved = pyqtSignal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._combo = QtWidgets.QComboBox(self)
        self._scene = None
        self._observers = []
        self._nodes: list = []     # listed nodes, in scene order
        self._current = None
        self._props = {"nodeTypes": [], "showHidden": False, "showChildNodeTypes": True,
                       "hideChildNodeTypes": [], "noneEnabled": False, "addEnabled": True,
                       "removeEnabled": True, "editEnabled": False, "renameEnabled": False}

    # -- properties (qMRMLNodeComboBox.h) -------------------------------------------------------
    def _prop(name, kind):   # noqa: N805 - a property factory used in the class body
        def get(self):
            return self._props[name]

        def set_(self, value):
            self._props[name] = list(value) if kind == "QStringList" else bool(value)
            self._refresh()
        return pyqtProperty(kind, get, set_)

    nodeTypes = _prop("nodeTypes", "QStringList")
    showHidden = _prop("showHidden", bool)
    showChildNodeTypes = _prop("showChildNodeTypes", bool)
    hideChildNodeTypes = _prop("hideChildNodeTypes", "QStringList")
    noneEnabled = _prop("noneEnabled", bool)
    addEnabled = _prop("addEnabled", bool)
    removeEnabled = _prop("removeEnabled", bool)
    editEnabled = _prop("editEnabled", bool)
    renameEnabled = _prop("renameEnabled", bool)
    del _prop

    # the setters uic calls for <property> elements
    def setNodeTypes(self, v): self.nodeTypes = v                  # noqa: E704
    def setShowHidden(self, v): self.showHidden = v                # noqa: E704
    def setShowChildNodeTypes(self, v): self.showChildNodeTypes = v  # noqa: E704
    def setHideChildNodeTypes(self, v): self.hideChildNodeTypes = v  # noqa: E704
    def setNoneEnabled(self, v): self.noneEnabled = v              # noqa: E704
    def setAddEnabled(self, v): self.addEnabled = v                # noqa: E704
    def setRemoveEnabled(self, v): self.removeEnabled = v          # noqa: E704
    def setEditEnabled(self, v): self.editEnabled = v              # noqa: E704
    def setRenameEnabled(self, v): self.renameEnabled = v          # noqa: E704

    def getCurrentNodeID(self):
        return self._current.GetID() if self._current is not None else ""

    def setCurrentNodeID(self, node_id):
        node = self._scene.GetNodeByID(node_id) if (self._scene is not None and node_id) else None
        self.setCurrentNode(node)

    currentNodeID = pyqtProperty(str, getCurrentNodeID, setCurrentNodeID)

    # -- scene ---------------------------------------------------------------------------------
    def setMRMLScene(self, scene):
        for obj, tag in self._observers:
            obj.RemoveObserver(tag)
        self._observers = []
        self._scene = scene
        if scene is not None:
            for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent, scene.EndCloseEvent):
                self._observers.append((scene, scene.AddObserver(event, self._on_scene)))
        self._current = None
        self._refresh()

    def mrmlScene(self):
        return self._scene

    def _on_scene(self, caller, event):
        self._refresh()

    def _accepts(self, node) -> bool:
        types_ = self._props["nodeTypes"]
        if self._props["showChildNodeTypes"]:
            ok = any(node.IsA(t) for t in types_)
        else:
            ok = node.GetClassName() in types_
        if not ok or any(node.IsA(t) for t in self._props["hideChildNodeTypes"]):
            return False
        return self._props["showHidden"] or not node.GetHideFromEditors()

    def _refresh(self):
        nodes = []
        if self._scene is not None:
            for i in range(self._scene.GetNumberOfNodes()):
                node = self._scene.GetNthNode(i)
                if self._accepts(node):
                    nodes.append(node)
        self._nodes = nodes
        blocked = self._combo.blockSignals(True)
        self._combo.clear()
        if self._props["noneEnabled"]:
            self._combo.addItem("None")
        for node in nodes:
            self._combo.addItem(node.GetName() or node.GetID())
        self._combo.blockSignals(blocked)
        current = self._current
        if current is not None and not any(n is current for n in nodes):
            current = None
        if current is None and not self._props["noneEnabled"] and nodes:
            current = nodes[0]
        self._set_current(current)
        self._on_list_changed()

    def _on_list_changed(self):
        pass

    def _set_current(self, node):
        changed = node is not self._current
        self._current = node
        index = next((i for i, n in enumerate(self._nodes) if n is node), -1)
        blocked = self._combo.blockSignals(True)
        self._combo.setCurrentIndex(index + (1 if self._props["noneEnabled"] else 0) if index >= 0 else
                                    (0 if self._props["noneEnabled"] else -1))
        self._combo.blockSignals(blocked)
        if changed:
            self.currentNodeChanged[object].emit(node)
            self.currentNodeChanged[bool].emit(node is not None)
            self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")

    # -- public API ----------------------------------------------------------------------------
    def currentNode(self):
        return self._current

    def setCurrentNode(self, node):
        if isinstance(node, str):
            return self.setCurrentNodeID(node)
        if node is not None and not any(n is node for n in self._nodes):
            node = None   # Slicer ignores nodes the combo box does not list
        self._set_current(node)

    def nodeCount(self) -> int:
        return len(self._nodes)

    def nodeFromIndex(self, index):
        return self._nodes[index] if 0 <= index < len(self._nodes) else None


class qMRMLCheckableNodeComboBox(qMRMLNodeComboBox):
    checkedNodesChanged = pyqtSignal()

    def __init__(self, parent=None):
        self._checked: list = []
        super().__init__(parent)

    def _on_list_changed(self):
        before = len(self._checked)
        self._checked = [n for n in self._checked if any(n is m for m in self._nodes)]
        if len(self._checked) != before:
            self.checkedNodesChanged.emit()

    def checkedNodes(self):
        return list(self._checked)

    def checkState(self, node):
        return QtCore.Qt.Checked if any(n is node for n in self._checked) else QtCore.Qt.Unchecked

    def setCheckState(self, node, state):
        listed = any(n is node for n in self._nodes)
        was = any(n is node for n in self._checked)
        if not listed or was == (state == QtCore.Qt.Checked):
            return
        if state == QtCore.Qt.Checked:
            self._checked.append(node)
            self._checked.sort(key=lambda n: next(i for i, m in enumerate(self._nodes) if m is n))
        else:
            self._checked = [n for n in self._checked if n is not node]
        self.checkedNodesChanged.emit()


class qSlicerWidget(QtWidgets.QWidget):
    """The module panel Slicer gives a scripted module widget (``self.parent``)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._entered = False
        self.setLayout(QtWidgets.QVBoxLayout())

    def getEntered(self):
        return self._entered

    isEntered = pyqtProperty(bool, getEntered)


CLASSES = {c.__name__: c for c in (ctkCollapsibleButton, ctkPathLineEdit, qMRMLWidget, qMRMLNodeComboBox,
                                   qMRMLCheckableNodeComboBox)}
