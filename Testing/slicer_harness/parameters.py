"""A stand-in for ``slicer.parameterNodeWrapper``, following Slicer's
Base/Python/slicer/parameterNodeWrapper (wrapper.py, serializers.py, validators.py,
guiConnectors.py) for the types and widgets MedTransfer uses:

- values live in the real ``vtkMRMLScriptedModuleNode`` as Slicer writes them: numbers and
  strings as text, ``bool`` as "True"/"False", ``pathlib.Path`` as text (its default is
  ``Path()``, shown as "."), nodes as node references, ``list[X]`` as ``name.len`` and
  ``name.0``, ``name.1`` …; a missing value is written with its default on construction;
- writes run the validators first (``WithinRange``, ``Choice``, the type check) and raise as
  Slicer does;
- ``connectGui(ui)`` binds every widget whose dynamic property ``SlicerParameterName`` names a
  parameter, with Slicer's connectors: QCheckBox ↔ bool, QSpinBox ↔ int, QDoubleSpinBox ↔ float
  (range from ``WithinRange``, else ±inf), QComboBox ↔ ``Choice`` (items replaced by the
  choices), ctkPathLineEdit ↔ Path, qMRMLNodeComboBox ↔ node (``nodeTypes`` set from the
  annotation); a widget/type pair Slicer has no connector for raises, as in Slicer; GUI changes
  write the parameter, parameter changes (ModifiedEvent) update the GUI;
- ``disconnectGui(tag)`` removes both directions.

Not reproduced: caching, parameter packs, enums, unions, custom serializers and connectors.
"""

from __future__ import annotations

import pathlib
import typing

import slicer
import vtk

from .pythonqt import unwrap


class Validator:
    def validate(self, value):
        raise NotImplementedError


class WithinRange(Validator):
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value):
        if not (self.minimum <= value <= self.maximum):
            raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")


class Choice(Validator):
    def __init__(self, choices):
        self.choices = choices

    def validate(self, value):
        if value not in self.choices:
            raise ValueError(f"Value is {value}, but must be in one of the following: {self.choices}")


class Default:
    def __init__(self, value=None):
        self.value = value


_PATHS = (pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePath)


class _Param:
    def __init__(self, name, annotation, default):
        self.name = name
        self.annotation = annotation
        base, extras = annotation, ()
        if typing.get_origin(annotation) is typing.Annotated:
            base, *extras = typing.get_args(annotation)
        self.type = base
        self.validators = [e for e in extras if isinstance(e, Validator)]
        if default is _MISSING:
            default = next((e.value for e in extras if isinstance(e, Default)), _MISSING)
        self.default = self._default() if default is _MISSING else default

    def _default(self):
        t = self.type
        if t in (int, float):
            return 0
        if t is str:
            return ""
        if t is bool:
            return False
        if t in _PATHS:
            return t()
        if typing.get_origin(t) is list:
            return []
        if isinstance(t, type) and issubclass(t, slicer.vtkMRMLNode):
            return None
        raise TypeError(f"the harness's parameterNodeWrapper has no serializer for {t}")

    def is_node(self):
        return isinstance(self.type, type) and issubclass(self.type, slicer.vtkMRMLNode)

    def validate(self, value):
        t = self.type
        if self.is_node():
            if value is not None and not isinstance(value, t):
                raise TypeError(f"Value must be of type '{t}', is type '{type(value)}' value '{value}'")
        elif typing.get_origin(t) is list:
            (elem,) = typing.get_args(t)
            if any(not isinstance(v, elem) for v in value):
                raise TypeError(f"list elements must be {elem}")
        else:
            if value is None:
                raise ValueError("Value must not be None")
            ok = isinstance(value, (int, float)) if t is float else isinstance(value, t)
            if t is int and isinstance(value, bool):
                ok = False
            if not ok:
                raise TypeError(f"Value must be of type '{t}', is type '{type(value)}' value '{value}'")
        for v in self.validators:
            v.validate(value)

    # -- serialisation in the scripted module node -----------------------------------------------
    def is_in(self, node):
        key = f"{self.name}.len" if typing.get_origin(self.type) is list else self.name
        return node.HasParameter(key)

    def write(self, node, value):
        self.validate(value)
        t = self.type
        was = node.StartModify()
        try:
            if self.is_node():
                node.SetParameter(self.name, "")
                node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
            elif typing.get_origin(t) is list:
                old = int(node.GetParameter(f"{self.name}.len") or 0) if node.HasParameter(f"{self.name}.len") else 0
                for i, v in enumerate(value):
                    node.SetParameter(f"{self.name}.{i}", str(v))
                node.SetParameter(f"{self.name}.len", str(len(value)))
                for i in range(len(value), old):
                    node.UnsetParameter(f"{self.name}.{i}")
            elif t is bool:
                node.SetParameter(self.name, "True" if value else "False")
            else:
                node.SetParameter(self.name, str(value))
        finally:
            node.EndModify(was)

    def read(self, node):
        if not self.is_in(node):
            self.write(node, self.default)
        t = self.type
        if self.is_node():
            return node.GetNodeReference(self.name)
        if typing.get_origin(t) is list:
            (elem,) = typing.get_args(t)
            n = int(node.GetParameter(f"{self.name}.len"))
            return ObservedList(self, node, [elem(node.GetParameter(f"{self.name}.{i}")) for i in range(n)])
        if t is bool:
            return node.GetParameter(self.name) == "True"
        return t(node.GetParameter(self.name))


_MISSING = object()


class ObservedList(list):
    """Slicer returns lists that write themselves back when changed in place (serializers.py
    ObservedList); equal to a plain list with the same items."""

    def __init__(self, param, node, items):
        super().__init__(items)
        self._param, self._node = param, node

    def _save(self):
        self._param.write(self._node, list(self))

    def append(self, item):
        super().append(item)
        self._save()

    def extend(self, items):
        super().extend(items)
        self._save()

    def remove(self, item):
        super().remove(item)
        self._save()

    def clear(self):
        super().clear()
        self._save()

    def __setitem__(self, index, item):
        super().__setitem__(index, item)
        self._save()


# -- GUI connectors (guiConnectors.py) ---------------------------------------------------------------
class _Connector:
    def __init__(self, widget, param):
        self.widget = widget
        self.param = param
        self.callback = None

    def on_changed(self, callback):
        if callback is None:
            getattr(self.widget, self.signal).disconnect(self._changed)
        else:
            getattr(self.widget, self.signal).connect(self._changed)
        self.callback = callback

    def _changed(self, *args):
        if self.callback:
            self.callback()


def _connector(widget, param):
    from . import widgets

    w = unwrap(widget)
    kind = type(w).__name__
    t = param.type
    if kind == "QCheckBox" and t is bool:
        c = _Connector(widget, param)
        c.signal, c.read, c.write = "stateChanged", lambda: widget.checked, lambda v: setattr(widget, "checked", v)
        return c
    if kind == "QSpinBox" and t is int:
        r = next((v for v in param.validators if isinstance(v, WithinRange)), None)
        w.setRange(r.minimum, r.maximum) if r else w.setRange(-(2 ** 31), 2 ** 31 - 1)
        c = _Connector(widget, param)
        c.signal, c.read, c.write = "valueChanged", lambda: widget.value, lambda v: setattr(widget, "value", v)
        return c
    if kind == "QDoubleSpinBox" and t in (float, int):
        r = next((v for v in param.validators if isinstance(v, WithinRange)), None)
        widget.minimum = r.minimum if r else float("-inf")
        widget.maximum = r.maximum if r else float("inf")
        c = _Connector(widget, param)
        c.signal, c.read, c.write = "valueChanged", lambda: widget.value, lambda v: setattr(widget, "value", v)
        return c
    if kind == "QComboBox" and t in (int, float, str, bool):
        choice = next((v for v in param.validators if isinstance(v, Choice)), None)
        if choice is None:
            raise RuntimeError("ComboBoxToStringableConnector requires the Choice annotation to be used.")
        w.clear()
        for ch in choice.choices:
            w.addItem(str(ch))
        c = _Connector(widget, param)

        def write(value):
            for i, ch in enumerate(choice.choices):
                if ch == value:
                    widget.currentIndex = i
                    return
            raise ValueError(f"Unable to find value {value} in choices {choice.choices}")
        c.signal, c.read, c.write = "currentIndexChanged", lambda: choice.choices[widget.currentIndex], write
        return c
    if isinstance(w, widgets.ctkPathLineEdit) and type(w) is widgets.ctkPathLineEdit and t in _PATHS:
        c = _Connector(widget, param)
        c.signal = "currentPathChanged"
        c.read = lambda: t(widget.currentPath)
        c.write = lambda v: setattr(widget, "currentPath", str(v))
        return c
    if type(w) is widgets.qMRMLNodeComboBox and param.is_node():
        widget.nodeTypes = [param.type.__name__]
        c = _Connector(widget, param)
        c.signal, c.read, c.write = "currentNodeChanged", lambda: widget.currentNode(), lambda v: widget.setCurrentNode(v)
        return c
    raise RuntimeError(f"Unable to create GUI connector from datatype '{t}' to widget type '{kind}'")


def parameterNodeWrapper(cls=None):
    def process(klass):
        hints = typing.get_type_hints(klass, include_extras=True)
        params = {name: _Param(name, ann, klass.__dict__.get(name, _MISSING)) for name, ann in hints.items()}

        def __init__(self, parameterNode):
            self.parameterNode = parameterNode
            self._guis = {}
            self._gui_observers = {}
            self._next_tag = 0
            self._updating_gui = False
            for p in params.values():
                if not p.is_in(parameterNode):
                    p.write(parameterNode, p.default)

        def make_property(p):
            return property(lambda self: p.read(self.parameterNode), lambda self, v: p.write(self.parameterNode, v))

        for name, p in params.items():
            setattr(klass, name, make_property(p))

        def connectGui(self, gui):
            mapping = {}
            for widget in gui.__dict__.values():
                name = widget.property("SlicerParameterName")
                if name:
                    if name not in params:
                        raise ValueError(f"Cannot find a param with the given name: {name}")
                    mapping[name] = widget
            connectors = {name: _connector(w, params[name]) for name, w in mapping.items()}
            tag = self._next_tag
            self._next_tag += 1
            self._guis[tag] = connectors
            for name, c in connectors.items():
                c.write(getattr(self, name))

                def gui_changed(name=name, c=c):
                    if not self._updating_gui:
                        setattr(self, name, c.read())
                c.on_changed(gui_changed)

            def node_changed(caller, event):
                if self._updating_gui:
                    return
                self._updating_gui = True
                try:
                    for n, conn in self._guis.get(tag, {}).items():
                        conn.write(getattr(self, n))
                finally:
                    self._updating_gui = False
            self._gui_observers[tag] = self.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, node_changed)
            return tag

        def disconnectGui(self, tag):
            for c in self._guis.pop(tag, {}).values():
                c.on_changed(None)
            if tag in self._gui_observers:
                self.parameterNode.RemoveObserver(self._gui_observers.pop(tag))

        klass.allParameters = params
        klass.__init__ = __init__
        klass.connectGui = connectGui
        klass.disconnectGui = disconnectGui
        klass.AddObserver = lambda self, e, cb, priority=0.0: self.parameterNode.AddObserver(e, cb, priority)
        klass.RemoveObserver = lambda self, tag: self.parameterNode.RemoveObserver(tag)
        klass.StartModify = lambda self: self.parameterNode.StartModify()
        klass.EndModify = lambda self, was: self.parameterNode.EndModify(was)
        klass.Modified = lambda self: self.parameterNode.Modified()
        klass.default = lambda self, name: Default(params[name].default)
        return klass

    return process if cls is None else process(cls)
