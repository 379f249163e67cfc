"""PyQt5 (the Qt 5 that Slicer ships) made to behave as PythonQt does inside Slicer.

What the module code relies on from PythonQt, and how it is reproduced here:

- **Qt properties are attributes.** ``label.text = "x"``, ``combo.currentIndex``,
  ``listWidget.count``, ``button.enabled``: when the object's meta-object has a property of that
  name it wins over a method of the same name (PythonQt's rule), read with ``property()`` and
  written with ``setProperty()``. ``name`` is ``objectName``.
- **String-signature connections.** ``obj.connect("clicked(bool)", slot)`` and
  ``obj.disconnect(...)``; new-style ``obj.clicked.connect(slot)`` too.
- **Slots may take fewer arguments than the signal sends** (``"clicked(bool)"`` connected to
  ``def onApply(self)``): the extra ones are dropped, as PythonQt does.
- **Qt objects come back wrapped** from properties, methods and signals, one wrapper per object,
  so identity and ``==`` hold; Python attributes set on a wrapper stay with the object.
- **``import qt``** gives every class of QtCore, QtGui and QtWidgets (plus stand-ins such as
  ``QUiLoader``); calling a class constructs and wraps; enums and static methods pass through.

What only a real Slicer can confirm: PythonQt's exact conversions of C++ types that never occur
in this module (QVariant maps, pointers to non-QObject classes), and the overload PythonQt picks
for a signal declared more than once.
"""

from __future__ import annotations

import inspect
import types

from PyQt5 import QtCore, QtGui, QtWidgets
from PyQt5.QtCore import QObject, pyqtBoundSignal

_CPP_TYPES = {"bool": bool, "int": int, "double": float, "float": float, "QString": str,
              "QStringList": list, "qlonglong": int}


def unwrap(value):
    if isinstance(value, PythonQtObject):
        return object.__getattribute__(value, "_o")
    if isinstance(value, PythonQtClass):
        return value._cls
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    if isinstance(value, tuple):
        return tuple(unwrap(v) for v in value)
    return value


def wrap(value):
    if isinstance(value, PythonQtObject):
        return value
    if isinstance(value, QObject):
        proxy = value.__dict__.get("_pythonqt_proxy")
        if proxy is None:
            proxy = PythonQtObject(value)
            value.__dict__["_pythonqt_proxy"] = proxy
        return proxy
    if isinstance(value, list):
        return [wrap(v) for v in value]
    if isinstance(value, tuple):
        return tuple(wrap(v) for v in value)
    return value


def _accepted(slot) -> int | None:
    """How many positional arguments ``slot`` takes (None: any number)."""
    try:
        sig = inspect.signature(slot)
    except (TypeError, ValueError):
        return None
    n = 0
    for p in sig.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            n += 1
    return n


# exceptions raised in Python slots: PythonQt prints them and the application goes on (slicer.util's
# tryWithErrorDisplay shows a dialog, then re-raises into PythonQt); tests read this list
SLOT_ERRORS: list = []


def _python_slot(slot):
    n = _accepted(slot)

    def call(*args):
        args = wrap(args)
        try:
            return slot(*(args if n is None else args[:n]))
        except Exception as exc:   # as PythonQt: print, record, carry on
            import traceback

            traceback.print_exc()
            SLOT_ERRORS.append(exc)
    return call


class _Connections:
    """(signal, slot) → the PyQt-side callable, so ``disconnect`` finds what ``connect`` made."""

    def __init__(self):
        self.made: dict = {}


def _signal(obj: QObject, signature: str):
    name, _, rest = signature.partition("(")
    args = [a.strip() for a in rest.rstrip(")").split(",") if a.strip()]
    sig = getattr(obj, name)
    if not isinstance(sig, pyqtBoundSignal):
        raise AttributeError(f"{type(obj).__name__} has no signal '{signature}'")
    if args:
        types_ = tuple(_CPP_TYPES.get(a.rstrip("*&").replace("const ", "").strip(), object) for a in args)
        try:
            return sig[types_ if len(types_) > 1 else types_[0]]
        except (KeyError, TypeError):
            return sig
    return sig


class SignalProxy:
    """A new-style signal (``obj.clicked``) whose slots get wrapped arguments."""

    def __init__(self, owner, sig):
        self._owner = owner
        self._sig = sig

    def connect(self, slot):
        made = object.__getattribute__(self._owner, "_connections").made
        key = (self._sig.signal, slot)
        made[key] = _python_slot(slot)
        self._sig.connect(made[key])

    def disconnect(self, slot=None):
        made = object.__getattribute__(self._owner, "_connections").made
        if slot is None:
            self._sig.disconnect()
            return
        self._sig.disconnect(made.pop((self._sig.signal, slot)))

    def emit(self, *args):
        self._sig.emit(*unwrap(args))

    def __getitem__(self, types_):
        return SignalProxy(self._owner, self._sig[types_])


class PythonQtObject:
    """A QObject as PythonQt presents it."""

    __slots__ = ("_o", "_attrs", "_connections", "__weakref__")

    def __init__(self, obj: QObject):
        object.__setattr__(self, "_o", obj)
        object.__setattr__(self, "_attrs", {})
        object.__setattr__(self, "_connections", _Connections())

    # -- attributes ------------------------------------------------------------------------
    def __getattr__(self, name):
        o = object.__getattribute__(self, "_o")
        attrs = object.__getattribute__(self, "_attrs")
        if name in attrs:
            return attrs[name]
        if name == "name":
            return o.objectName()
        if o.metaObject().indexOfProperty(name) >= 0:
            return wrap(o.property(name))
        attr = getattr(o, name)
        if isinstance(attr, pyqtBoundSignal):
            return SignalProxy(self, attr)
        if callable(attr):
            def method(*args, **kw):
                return wrap(attr(*unwrap(args), **{k: unwrap(v) for k, v in kw.items()}))
            method.__name__ = name
            return method
        return wrap(attr)

    def __setattr__(self, name, value):
        o = object.__getattribute__(self, "_o")
        if name == "name":
            o.setObjectName(value)
            return
        index = o.metaObject().indexOfProperty(name)
        if index >= 0:
            if not o.metaObject().property(index).isWritable() or not o.setProperty(name, unwrap(value)):
                raise AttributeError(f"property '{name}' of {type(o).__name__} cannot be set to {value!r}")
            return
        object.__getattribute__(self, "_attrs")[name] = value

    def __dir__(self):
        o = object.__getattribute__(self, "_o")
        mo = o.metaObject()
        return sorted(set(dir(o)) | {mo.property(i).name() for i in range(mo.propertyCount())}
                      | set(object.__getattribute__(self, "_attrs")) | {"name", "connect", "disconnect"})

    # -- identity --------------------------------------------------------------------------
    def __eq__(self, other):
        return unwrap(self) is unwrap(other)

    def __hash__(self):
        return id(object.__getattribute__(self, "_o"))

    def __bool__(self):
        return True

    def __repr__(self):
        o = object.__getattribute__(self, "_o")
        return f"<PythonQt {type(o).__name__} '{o.objectName()}'>"

    # -- PythonQt's string-signature connections ---------------------------------------------
    def connect(self, signature, slot, *rest):
        if not isinstance(signature, str):   # QObject.connect(sender, signal, receiver, slot) is not used
            raise TypeError("connect(signature: str, slot)")
        o = object.__getattribute__(self, "_o")
        sig = _signal(o, signature)
        made = object.__getattribute__(self, "_connections").made
        key = (signature.replace(" ", ""), slot)
        made[key] = _python_slot(slot)
        sig.connect(made[key])
        return True

    def disconnect(self, signature, slot=None):
        o = object.__getattribute__(self, "_o")
        sig = _signal(o, signature)
        made = object.__getattribute__(self, "_connections").made
        if slot is None:
            sig.disconnect()
            return True
        key = (signature.replace(" ", ""), slot)
        if key not in made:
            return False
        sig.disconnect(made.pop(key))
        return True


class PythonQtClass:
    """A Qt class as ``qt.X``: calling it constructs and wraps; class attributes pass through."""

    def __init__(self, cls):
        self._cls = cls

    def __call__(self, *args, **kw):
        return wrap(self._cls(*unwrap(args), **{k: unwrap(v) for k, v in kw.items()}))

    def __getattr__(self, name):
        attr = getattr(self._cls, name)
        if isinstance(attr, (types.BuiltinFunctionType, types.FunctionType, types.MethodType)):
            def static(*args, **kw):
                return wrap(attr(*unwrap(args), **{k: unwrap(v) for k, v in kw.items()}))
            return static
        return attr

    def __instancecheck__(self, obj):
        return isinstance(unwrap(obj), self._cls)

    def __eq__(self, other):
        return unwrap(other) is self._cls

    def __hash__(self):
        return hash(self._cls)

    def __repr__(self):
        return f"<PythonQt class {self._cls.__name__}>"


def qt_module(extra: dict | None = None) -> types.ModuleType:
    """The ``qt`` module as Slicer's Python sees it; ``extra`` adds stand-in classes by name."""
    module = types.ModuleType("qt")
    module.__doc__ = "PythonQt-like view of PyQt5 (test harness)"
    extra = dict(extra or {})

    def __getattr__(name):
        if name in extra:
            value = extra[name]
        else:
            for lib in (QtCore, QtGui, QtWidgets):
                if hasattr(lib, name):
                    value = getattr(lib, name)
                    break
            else:
                raise AttributeError(f"module 'qt' has no attribute '{name}'")
        if isinstance(value, type) and name != "Qt":
            value = PythonQtClass(value)
        setattr(module, name, value)
        return value

    module.__getattr__ = __getattr__
    return module
