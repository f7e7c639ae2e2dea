"""The type stubs (pare/__init__.pyi) against the module itself, both ways:
every public name, every class member, every parameter name, kind and default
must agree, and every public name must explain itself (a docstring and, for
functions, a real signature). A name added to the bindings without a stub, or
a stub left behind by a change, fails here."""

import ast
import inspect
import pathlib
import re

import pytest

import pare

STUB = pathlib.Path(pare.__file__).with_name("__init__.pyi")
# Dunder methods that are part of the API and so must be in the stubs.
API_DUNDERS = {"__init__", "__iter__", "__enter__", "__exit__", "__call__", "__getitem__", "__contains__", "__len__"}


def stub_tree():
    assert STUB.exists(), f"{STUB} is missing: the package must ship its type stubs"
    return ast.parse(STUB.read_text())


def public(name):
    return not name.startswith("_") or name in API_DUNDERS or name == "__version__"


def stub_names(tree):
    names = {}
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    names = {n: v for n, v in names.items() if public(n)}
    if not hasattr(pare, "RedisTier"):  # built without PARE_WITH_REDIS
        names.pop("RedisTier", None)
        names.pop("RedisTierStats", None)
    return names


def test_all_lists_every_public_name_and_the_stubs_cover_all():
    names = stub_names(stub_tree())
    assert sorted(set(pare.__all__)) == sorted(pare.__all__), "__all__ has duplicates"
    for name in pare.__all__:
        assert hasattr(pare, name), f"pare.__all__ names {name}, which pare does not define"
    assert set(pare.__all__) == set(names), (
        f"in __all__ without a stub: {sorted(set(pare.__all__) - set(names))}; "
        f"stubbed but not in __all__: {sorted(set(names) - set(pare.__all__))}")
    # Whatever pare (or its extension) defines publicly is in __all__.
    defined = {n for n, v in vars(pare).items()
               if public(n) and not inspect.ismodule(v) and getattr(v, "__module__", "").startswith("pare")}
    assert defined - {"cli_main"} <= set(pare.__all__), f"public but not in __all__: {sorted(defined - set(pare.__all__))}"


def split_top_level(text):
    parts, depth, quote, current = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


NO_DEFAULT = object()
UNKNOWN = object()  # a default the text does not spell as a literal


def literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return UNKNOWN


def runtime_parameters(fn, name):
    """[(name, kind, default)] of a pybind11 function (from its signature line) or a Python one."""
    if inspect.isfunction(fn) or inspect.ismethod(fn):
        out = []
        for p in inspect.signature(fn).parameters.values():
            default = NO_DEFAULT if p.default is p.empty else p.default
            out.append((p.name, p.kind.name, default))
        return out
    doc = fn.__doc__ or ""
    assert doc.startswith(name + "("), f"{name}: no signature line in its docstring: {doc[:80]!r}"
    assert "Overloaded function" not in doc.splitlines()[0], f"{name}: overloads are not stubbed"
    depth, end = 0, None
    for i, ch in enumerate(doc):
        depth += ch == "("
        depth -= ch == ")"
        if ch == ")" and depth == 0:
            end = i
            break
    out, kind = [], "POSITIONAL_OR_KEYWORD"
    for part in split_top_level(doc[len(name) + 1:end]):
        if part == "*":
            kind = "KEYWORD_ONLY"
            continue
        if part == "/":
            out = [(n, "POSITIONAL_ONLY", d) for n, _, d in out]
            continue
        if part.startswith("**"):
            out.append((part[2:].split(":")[0], "VAR_KEYWORD", NO_DEFAULT))
            continue
        if part.startswith("*"):
            out.append((part[1:].split(":")[0], "VAR_POSITIONAL", NO_DEFAULT))
            kind = "KEYWORD_ONLY"
            continue
        head, _, default = part.partition(" = ")
        out.append((head.split(":")[0].strip(), kind, literal(default) if default else NO_DEFAULT))
    return out


def stub_parameters(node):
    a = node.args
    out = [(p.arg, "POSITIONAL_ONLY") for p in a.posonlyargs] + [(p.arg, "POSITIONAL_OR_KEYWORD") for p in a.args]
    defaults = [NO_DEFAULT] * (len(out) - len(a.defaults)) + [stub_default(d) for d in a.defaults]
    out = [(n, k, d) for (n, k), d in zip(out, defaults)]
    if a.vararg:
        out.append((a.vararg.arg, "VAR_POSITIONAL", NO_DEFAULT))
    for p, d in zip(a.kwonlyargs, a.kw_defaults):
        out.append((p.arg, "KEYWORD_ONLY", NO_DEFAULT if d is None else stub_default(d)))
    if a.kwarg:
        out.append((a.kwarg.arg, "VAR_KEYWORD", NO_DEFAULT))
    return out


def stub_default(node):
    if isinstance(node, ast.Constant) and node.value is Ellipsis:
        return UNKNOWN  # `= ...`: a default the stub does not spell out
    try:
        return ast.literal_eval(node)
    except ValueError:
        return UNKNOWN


def same_default(stub, runtime):
    if stub is NO_DEFAULT or runtime is NO_DEFAULT:
        return stub is runtime
    return stub is UNKNOWN or runtime is UNKNOWN or stub == runtime


def check_signature(qualname, node, fn, method):
    stub = stub_parameters(node)
    runtime = runtime_parameters(fn, node.name)
    if method and runtime and runtime[0][0] == "self" and not (stub and stub[0][0] == "self"):
        pytest.fail(f"{qualname}: the stub lacks self")
    assert [(n, k) for n, k, _ in stub] == [(n, k) for n, k, _ in runtime], (
        f"{qualname}: stub parameters {[(n, k) for n, k, _ in stub]} != module's {[(n, k) for n, k, _ in runtime]}")
    for (n, _, s), (_, _, r) in zip(stub, runtime):
        assert same_default(s, r), f"{qualname}({n}=...): stub default {s!r} != module's {r!r}"


def is_property(node):
    return isinstance(node, ast.FunctionDef) and any(
        isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list)


def class_members(node):
    members = {}
    for item in node.body:
        if isinstance(item, ast.FunctionDef):
            members[item.name] = item
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            members[item.target.id] = item
    return {n: v for n, v in members.items() if public(n)}


def runtime_members(cls):
    members = {n: v for n, v in vars(cls).items() if public(n) and n not in ("__doc__", "__module__")}
    if type(members.get("__init__")).__name__ == "wrapper_descriptor":
        del members["__init__"]  # pybind11's "No constructor defined": not constructible from Python
    return members


def stubbed_classes():
    return [(n, v) for n, v in stub_names(stub_tree()).items() if isinstance(v, ast.ClassDef)]


@pytest.mark.parametrize("name,node", stubbed_classes(), ids=[n for n, _ in stubbed_classes()])
def test_class_members_and_signatures_agree(name, node):
    cls = getattr(pare, name)
    stub = class_members(node)
    runtime = runtime_members(cls)
    instance_only = set(stub) - set(runtime)
    if instance_only and not issubclass(cls, BaseException) and cls.__module__ == "pare":
        instance = cls()  # a pure-Python class: attributes set in __init__
        instance_only = {n for n in instance_only if not hasattr(instance, n)}
    assert not instance_only, f"pare.{name}: stubbed but missing from the module: {sorted(instance_only)}"
    assert set(runtime) <= set(stub), f"pare.{name}: in the module but not stubbed: {sorted(set(runtime) - set(stub))}"
    for member, item in stub.items():
        value = runtime.get(member)
        if value is None:
            continue
        qualname = f"pare.{name}.{member}"
        if isinstance(item, ast.AnnAssign):
            assert isinstance(value, property) and value.fset is not None, f"{qualname}: stubbed writable, is not"
        elif is_property(item):
            assert isinstance(value, property) and value.fset is None, f"{qualname}: stubbed read-only property, is not"
        else:
            static = isinstance(value, staticmethod)
            assert static == any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in item.decorator_list), (
                f"{qualname}: static in one and not the other")
            fn = value.__func__ if static else value
            assert callable(fn), f"{qualname}: stubbed as a method, is {type(value).__name__}"
            check_signature(qualname, item, fn, method=not static)


@pytest.mark.parametrize("name", [n for n, v in stub_names(stub_tree()).items() if isinstance(v, ast.FunctionDef)])
def test_function_signatures_agree(name):
    check_signature(f"pare.{name}", stub_names(stub_tree())[name], getattr(pare, name), method=False)


def doc_text(obj):
    """The docstring without pybind11's signature line."""
    doc = inspect.getdoc(obj) or ""
    if re.match(r"^\w+\(.*\)( -> .*)?$", doc.splitlines()[0] if doc else ""):
        doc = "\n".join(doc.splitlines()[1:])
    return doc.strip()


def test_every_public_name_has_a_docstring():
    missing = []
    for name in pare.__all__:
        obj = getattr(pare, name)
        if name == "__version__":
            continue
        if not doc_text(obj):
            missing.append(name)
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            for member, value in runtime_members(obj).items():
                target = value.__func__ if isinstance(value, staticmethod) else value
                if not doc_text(target):
                    missing.append(f"{name}.{member}")
    assert not missing, f"no docstring: {missing}"


def test_help_shows_real_signatures():
    for fn in (pare.Runner.run, pare.Runner.__call__, pare.Runner.run_async):
        first = fn.__doc__.splitlines()[0]
        assert "**kwargs" not in first and "timeout: Optional[float] = None" in first, first
    assert "*, scope: str = 'local'" in pare.L1Prune.__init__.__doc__.splitlines()[0]
    assert list(inspect.signature(pare.Pipeline.run).parameters) == ["self", "module"]


def test_stub_files_are_installed_beside_the_module():
    here = pathlib.Path(pare.__file__).parent
    assert (here / "py.typed").exists()
    assert (here / "__init__.pyi").exists()
