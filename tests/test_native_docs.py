"""The runtime docstrings of ``oramstore._native`` are the stub's, and every callable in it has a
signature that ``inspect`` can read.

The stub ``_native.pyi`` is parsed with :mod:`ast` and compared with what the extension module
reports at runtime, so that ``help()`` and the type checkers never tell a user different
things.
"""

from __future__ import annotations

import ast
import inspect
import types
from pathlib import Path
from typing import Any

import pytest

import oramstore
from oramstore import _native as native

STUB = Path(oramstore.__file__).with_name("_native.pyi")

#: Descriptors whose docstrings the interpreter supplies: the slot wrappers (``__len__``,
#: ``__eq__``, ``__hash__``, ...) and the generic ``__new__`` of an extension type.
INTERPRETER_DOCUMENTED = (types.WrapperDescriptorType, types.BuiltinFunctionType)


def _stub_definitions() -> dict[str, ast.FunctionDef | ast.ClassDef]:
    """Every class, function and class member of the stub, by qualified name."""
    tree = ast.parse(STUB.read_text(encoding="utf-8"), filename=str(STUB))
    found: dict[str, ast.FunctionDef | ast.ClassDef] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found[node.name] = node
        elif isinstance(node, ast.ClassDef):
            found[node.name] = node
            for member in node.body:
                if isinstance(member, ast.FunctionDef):
                    found[f"{node.name}.{member.name}"] = member
    return found


STUB_DEFINITIONS = _stub_definitions()


def _runtime_names() -> list[str]:
    """The public names of the module and the members of its classes that carry a docstring
    of their own: every public method and property, and every dunder method the stub documents
    that is not one of the interpreter's."""
    names = []
    for name in sorted(n for n in dir(native) if not n.startswith("_")):
        names.append(name)
        obj = getattr(native, name)
        if not isinstance(obj, type):
            continue
        for member, value in sorted(vars(obj).items()):
            qualified = f"{name}.{member}"
            documented_dunder = (
                qualified in STUB_DEFINITIONS
                and ast.get_docstring(STUB_DEFINITIONS[qualified]) is not None
                and not isinstance(value, INTERPRETER_DOCUMENTED)
            )
            if not member.startswith("_") or documented_dunder:
                names.append(qualified)
    return names


RUNTIME_NAMES = _runtime_names()


def _runtime_object(qualified: str) -> Any:
    """The module attribute, or the class member as stored on the class (the descriptor itself,
    so that a property's docstring is the property's)."""
    name, _, member = qualified.partition(".")
    obj = getattr(native, name)
    return vars(obj)[member] if member else obj


def _runtime_callable(qualified: str) -> Any:
    """What a caller calls: the class or function, or the attribute looked up on the class."""
    name, _, member = qualified.partition(".")
    obj = getattr(native, name)
    return getattr(obj, member) if member else obj


def _first_line(doc: str) -> str:
    return doc.strip().splitlines()[0].strip()


def test_every_kind_of_name_is_checked() -> None:
    assert "UntrustedStorage.checkout" in RUNTIME_NAMES
    assert "UntrustedStorage.count" in RUNTIME_NAMES
    assert "UntrustedStorage.__exit__" in RUNTIME_NAMES
    assert "AllocatorStats.ranges" in RUNTIME_NAMES
    assert "allocated_bytes" in RUNTIME_NAMES


@pytest.mark.parametrize("qualified", RUNTIME_NAMES)
def test_runtime_docstring_matches_the_stub(qualified: str) -> None:
    assert qualified in STUB_DEFINITIONS, f"{qualified} is missing from {STUB.name}"
    stub_doc = ast.get_docstring(STUB_DEFINITIONS[qualified])
    assert stub_doc, f"{qualified} has no docstring in {STUB.name}"
    runtime_doc = _runtime_object(qualified).__doc__
    assert runtime_doc, f"{qualified} has no docstring at runtime"
    assert _first_line(runtime_doc) == _first_line(stub_doc)


def test_every_docstring_of_the_stub_is_checked() -> None:
    documented = set()
    for qualified, node in STUB_DEFINITIONS.items():
        if ast.get_docstring(node) is None:
            continue
        name, _, member = qualified.partition(".")
        if member and isinstance(vars(getattr(native, name)).get(member), INTERPRETER_DOCUMENTED):
            continue
        documented.add(qualified)
    assert documented <= set(RUNTIME_NAMES)


def _stub_parameters(qualified: str) -> list[str]:
    """The parameter names the stub gives ``qualified`` when called, without ``self`` or
    ``cls``; a class is called through its ``__new__``."""
    node = STUB_DEFINITIONS[qualified]
    if isinstance(node, ast.ClassDef):
        if f"{qualified}.__new__" not in STUB_DEFINITIONS:
            return []
        node = STUB_DEFINITIONS[f"{qualified}.__new__"]
    assert isinstance(node, ast.FunctionDef)
    args = node.args
    params = [a.arg for a in (*args.posonlyargs, *args.args)]
    params += [a.arg for a in (args.vararg,) if a is not None]
    params += [a.arg for a in args.kwonlyargs]
    params += [a.arg for a in (args.kwarg,) if a is not None]
    return [p for p in params if p not in ("self", "cls")]


PUBLIC_CALLABLES = [
    qualified for qualified in RUNTIME_NAMES if callable(_runtime_callable(qualified))
]


@pytest.mark.parametrize("qualified", PUBLIC_CALLABLES)
def test_signature_matches_the_stub(qualified: str) -> None:
    signature = inspect.signature(_runtime_callable(qualified))
    params = [p for p in signature.parameters if p not in ("self", "cls")]
    assert params == _stub_parameters(qualified)
