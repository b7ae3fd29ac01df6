# Architecture rules, checked by reading the package source with ast (nothing here opens a
# socket, and only the last test imports the package). The package is built in layers so that
# each layer can be read, tested and replaced knowing only the layers below it: the pure
# protocol and command code has no I/O, clock or logger, so it is tested by feeding it values;
# only the shell touches sockets, and exactly one module writes to them. These tests pin that
# shape, so a shortcut that would quietly erode it (an upward import, an import cycle, a second
# place that sends bytes, a reach into another module's privates) fails here with the file and
# line that broke the rule.
from __future__ import annotations

import ast
import functools
import importlib
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "reactor_mgmt"
PACKAGE_DIR = ROOT / PACKAGE
EXAMPLES = PACKAGE + ".examples"

LAYER_NAMES = ["base", "pure", "engine", "shell", "services", "facade", "top"]

# Module -> layer (lower number = lower layer). A module may import from its own layer and the
# layers below it, never from a layer above. Every module of reactor_mgmt.examples is layer 6
# (see layer_of), so examples need no entry here.
LAYERS: Dict[str, int] = {
    # 0 base
    "reactor_mgmt._errors": 0,
    "reactor_mgmt._log": 0,
    # 1 pure: no I/O, no clock, no logger
    "reactor_mgmt._protocol": 1,
    "reactor_mgmt._replies": 1,
    "reactor_mgmt._commands": 1,
    # 2 engine
    "reactor_mgmt._render": 2,
    "reactor_mgmt._wire": 2,
    "reactor_mgmt._session": 2,
    "reactor_mgmt._dispatch": 2,
    # 3 shell: sockets and the selectors loop
    "reactor_mgmt._transport": 3,
    "reactor_mgmt._tls": 3,
    "reactor_mgmt._listeners": 3,
    "reactor_mgmt._loop": 3,
    # 4 services
    "reactor_mgmt._builtins": 4,
    "reactor_mgmt._integrations": 4,
    "reactor_mgmt._discovery": 4,
    "reactor_mgmt._activity": 4,
    "reactor_mgmt._toolkit": 4,
    # 5 facade
    "reactor_mgmt._server": 5,
    # 6 top
    "reactor_mgmt": 6,
    "reactor_mgmt.__main__": 6,
    "reactor_mgmt._client": 6,
    "reactor_mgmt._cli": 6,
    "reactor_mgmt._demo": 6,
}

# Rule 2: what the base and pure layers may not import, at any depth.
LOW_MODULES = [name for name, layer in LAYERS.items() if layer <= 1]
LOW_FORBIDDEN_STDLIB = {"socket", "selectors", "time", "logging", "threading", "select", "ssl"}
LOW_FORBIDDEN_PACKAGE = {"reactor_mgmt._log"}
# The one exception: _log exists to be the single place that imports logging (lazily, on the
# first log call), so that nothing else has to.
LOW_EXCEPTIONS = {("reactor_mgmt._log", "logging")}

# Rule 3: the only server-side module that writes to a socket. Client-side modules are exempt.
SEND_METHODS = {"send", "sendall", "sendmsg", "sendto", "sendfile"}
SEND_EXEMPT_FILES = {"_client.py", "_cli.py", "_demo.py", "__main__.py"}
SEND_EXEMPT_DIRS = {"examples"}
SEND_MODULES = {"_transport.py"}

# Rule 4.
# "About 400": the Server façade (40 constructor keywords, the docstrings of ~40 public names) is
# the largest. A signature counts as one line, however the formatter spreads its parameters, so
# the limit measures the code and not the layout.
MAX_CLASS_LINES = 440

# Rule 6: private names of the standard library that the package may use on other objects.
STDLIB_PRIVATE_NAMES = {
    "_getframe",  # sys._getframe
    "_current_frames",  # sys._current_frames (`show threads`)
    "_exit",  # os._exit
    "_replace",  # namedtuple
    "_asdict",  # namedtuple
    "_fields",  # namedtuple
    "_make",  # namedtuple
}

# Rule 6: `from .module import _private` imports that are tolerated, as
# (importing file, source module, name), e.g.
#   ("reactor_mgmt/_server.py", "reactor_mgmt._dispatch", "_err_line"),
# Keep it empty: a name another module needs is not private, so rename it instead.
ALLOWED_PRIVATE_IMPORTS: Set[Tuple[str, str, str]] = set()


# ---- reading the package ----


class Module(NamedTuple):
    name: str  # dotted: "reactor_mgmt._server", "reactor_mgmt" for __init__.py
    path: Path
    rel: str  # "reactor_mgmt/_server.py", for messages
    is_package: bool


class Edge(NamedTuple):
    source: str  # importing module
    target: str  # imported package module
    rel: str
    line: int
    text: str  # the import statement

    def where(self) -> str:
        return f"{self.rel}:{self.line}: `{self.text}`"


@functools.cache
def package_modules() -> Tuple[Module, ...]:
    modules = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if "__pycache__" in parts:
            continue
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        rel = path.relative_to(ROOT).as_posix()
        modules.append(Module(".".join(parts), path, rel, is_package))
    return tuple(modules)


def module_names() -> Set[str]:
    return {module.name for module in package_modules()}


def known_module(name: str) -> bool:
    """A module of the package: it has a file, or the layer map places it (it may be planned)."""
    return name in module_names() or name in LAYERS


def in_package(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def layer_of(name: str) -> Optional[int]:
    if name == EXAMPLES or (name.startswith(EXAMPLES + ".") and name.count(".") == 2):
        return 6
    return LAYERS.get(name)


def describe_layer(layer: Optional[int]) -> str:
    return "no layer" if layer is None else f"layer {layer} {LAYER_NAMES[layer]}"


@functools.cache
def parse(module: Module) -> ast.Module:
    source = module.path.read_text(encoding="utf-8")
    try:
        return ast.parse(source, filename=module.rel)
    except SyntaxError as exc:
        pytest.fail(f"{module.rel}:{exc.lineno}: cannot parse: {exc.msg}", pytrace=False)
        raise


def is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below `node`, at any depth, except the bodies of `if TYPE_CHECKING:` blocks
    (their else branch does run, so it is kept)."""
    for child in ast.iter_child_nodes(node):
        yield child
        if isinstance(child, ast.If) and is_type_checking(child.test):
            for stmt in child.orelse:
                yield stmt
                yield from runtime_nodes(stmt)
        else:
            yield from runtime_nodes(child)


def resolve_from_base(module: Module, node: ast.ImportFrom) -> Optional[str]:
    """The absolute name of the module an ImportFrom reads from (`from .._x import y` in
    reactor_mgmt/examples/foo.py -> reactor_mgmt._x)."""
    if node.level == 0:
        return node.module
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    parts = package.split(".")
    up = node.level - 1
    if up >= len(parts):
        return None
    base = ".".join(parts[: len(parts) - up])
    return f"{base}.{node.module}" if node.module else base


def import_targets(module: Module, node: ast.AST) -> List[str]:
    """The package modules an import statement loads (parent packages not counted)."""
    targets: List[str] = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            if not in_package(alias.name):
                continue
            name = alias.name
            while not known_module(name) and "." in name and name != PACKAGE:
                name = name.rpartition(".")[0]
            targets.append(name if known_module(name) else alias.name)
    elif isinstance(node, ast.ImportFrom):
        base = resolve_from_base(module, node)
        if base is None or not in_package(base):
            return []
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            # `from . import _client` loads the module _client; `from . import Server` loads
            # the package itself.
            targets.append(submodule if known_module(submodule) else base)
    return list(dict.fromkeys(targets))


def package_edges(module: Module) -> List[Edge]:
    """Every run-time import of a package module by `module`, at any depth."""
    edges = []
    for node in runtime_nodes(parse(module)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in import_targets(module, node):
                edges.append(Edge(module.name, target, module.rel, node.lineno, ast.unparse(node)))
    return edges


def stdlib_imports(module: Module) -> Iterator[Tuple[str, ast.stmt]]:
    """(top-level module name, statement) for every run-time absolute import outside the
    package."""
    for node in runtime_nodes(parse(module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not in_package(alias.name):
                    yield alias.name.partition(".")[0], node
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if not in_package(node.module):
                yield node.module.partition(".")[0], node


def import_graph() -> Dict[str, Dict[str, Edge]]:
    """source -> target -> the first import statement making that edge."""
    graph: Dict[str, Dict[str, Edge]] = {module.name: {} for module in package_modules()}
    for module in package_modules():
        for edge in package_edges(module):
            graph[module.name].setdefault(edge.target, edge)
    return graph


def find_cycles(graph: Dict[str, Dict[str, Edge]]) -> List[Tuple[List[str], List[str]]]:
    """(cycle path with its first node repeated at the end, all modules of its strongly connected
    component) for each component that has a cycle, found with Tarjan's algorithm. A component
    can hold more than one cycle; the shortest one through its first module is shown."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, {})):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)

    cycles = []
    for component in components:
        start = component[0]
        if len(component) == 1 and start not in graph.get(start, {}):
            continue
        # Shortest way from start back to start, inside the component.
        members = set(component)
        previous: Dict[str, str] = {}
        frontier = [start]
        found = False
        while frontier and not found:
            following = []
            for node in frontier:
                for target in sorted(graph.get(node, {})):
                    if target == start:
                        previous[start] = node
                        found = True
                        break
                    if target in members and target not in previous:
                        previous[target] = node
                        following.append(target)
                if found:
                    break
            frontier = following
        path = [start]
        node = previous[start]
        while node != start:
            path.append(node)
            node = previous[node]
        path.append(start)
        path.reverse()
        cycles.append((path, component))
    return cycles


def by_location(problem: str) -> Tuple[str, int, str]:
    """Sort key putting "path:line: ..." messages in file and line order."""
    path, _, rest = problem.partition(":")
    line, _, _ = rest.partition(":")
    return (path, int(line) if line.isdigit() else 0, problem)


def fail_with(header: str, problems: List[str]) -> None:
    if problems:
        problems = sorted(problems, key=by_location)
        pytest.fail(header + "\n  " + "\n  ".join(problems), pytrace=False)


# ---- 1. layers ----


def test_every_module_is_placed_in_a_layer() -> None:
    problems = [
        f"{module.rel} ({module.name}) is not in the layer map: place the new module in a "
        f"layer in LAYERS in tests/test_architecture.py"
        for module in package_modules()
        if layer_of(module.name) is None
    ]
    fail_with("Modules without a layer:", problems)


def test_every_planned_module_exists() -> None:
    # The other direction: a module renamed or merged away must leave the layer map too, or the
    # map stops describing the package.
    problems = [
        f"{name} is in LAYERS ({describe_layer(layer)}) but {name.replace('.', '/')}.py does not exist"
        for name, layer in LAYERS.items()
        if name not in module_names()
    ]
    fail_with("Layer map entries without a module file:", problems)


def test_no_import_goes_to_a_higher_layer() -> None:
    problems = []
    for module in package_modules():
        source_layer = layer_of(module.name)
        if source_layer is None:
            continue  # reported by test_every_module_is_placed_in_a_layer
        for edge in package_edges(module):
            target_layer = layer_of(edge.target)
            if target_layer is None:
                if edge.target not in module_names():
                    problems.append(
                        f"{edge.where()} imports {edge.target}, which is neither a module file nor in the layer map"
                    )
                continue
            if target_layer > source_layer:
                problems.append(
                    f"{edge.where()}: {module.name} ({describe_layer(source_layer)}) imports "
                    f"{edge.target} ({describe_layer(target_layer)})"
                )
    fail_with("Imports that go up the layers (a module may only import its layer or below):", problems)


def test_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    problems = []
    for cycle, component in find_cycles(graph):
        lines = [" -> ".join(cycle)]
        for source, target in zip(cycle, cycle[1:]):
            lines.append("    " + graph[source][target].where())
        if len(component) > len(cycle) - 1:
            lines.append(
                f"    (the modules {', '.join(component)} all import each other, "
                f"directly or not: breaking this cycle may leave another)"
            )
        problems.append("\n  ".join(lines))
    fail_with("Import cycles (imports under `if TYPE_CHECKING:` not counted):", problems)


# ---- 2. the base and pure layers have no I/O, clock or logger ----


def test_base_and_pure_layers_import_no_io_clock_or_logger() -> None:
    problems = []
    present = [module for module in package_modules() if module.name in LOW_MODULES]
    for module in present:
        own_layer = LAYERS[module.name]
        for top_name, node in stdlib_imports(module):
            if top_name in LOW_FORBIDDEN_STDLIB and (module.name, top_name) not in LOW_EXCEPTIONS:
                problems.append(
                    f"{module.rel}:{node.lineno}: `{ast.unparse(node)}`: "
                    f"{describe_layer(own_layer)} may not import {top_name}"
                )
        for edge in package_edges(module):
            if edge.target == module.name:
                continue
            target_layer = layer_of(edge.target)
            if edge.target in LOW_FORBIDDEN_PACKAGE:
                problems.append(f"{edge.where()}: {describe_layer(own_layer)} may not import {edge.target}")
            elif target_layer is None or target_layer > own_layer:
                problems.append(
                    f"{edge.where()}: {module.name} ({describe_layer(own_layer)}) imports "
                    f"{edge.target} ({describe_layer(target_layer)})"
                )
    fail_with(
        f"Forbidden imports in the base and pure layers (no "
        f"{', '.join(sorted(LOW_FORBIDDEN_STDLIB))}, no reactor_mgmt._log, nothing from a "
        f"higher layer):",
        problems,
    )


# ---- 3. one module sends ----


def test_only_the_transport_calls_send() -> None:
    calls: Dict[str, List[str]] = {}
    for module in package_modules():
        relative = module.path.relative_to(PACKAGE_DIR)
        if relative.as_posix() in SEND_EXEMPT_FILES or relative.parts[0] in SEND_EXEMPT_DIRS:
            continue
        for node in ast.walk(parse(module)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SEND_METHODS:
                calls.setdefault(relative.as_posix(), []).append(
                    f"{module.rel}:{node.lineno}: `{ast.unparse(node.func)}(...)`"
                )
    problems = []
    for name in sorted(set(calls) - SEND_MODULES):
        problems.extend(calls[name])
    for name in sorted(SEND_MODULES - set(calls)):
        exists = (PACKAGE_DIR / name).exists()
        problems.append(
            f"{PACKAGE}/{name} "
            + ("makes no send call" if exists else "does not exist")
            + ": it should be the one module that writes to sockets"
        )
    fail_with(
        f"Send calls ({', '.join(sorted(SEND_METHODS))}) must be in exactly "
        f"{sorted(SEND_MODULES)} (found in {sorted(calls)}):",
        problems,
    )


# ---- 4. class size ----


def test_no_class_is_longer_than_the_limit() -> None:
    problems = []
    for module in package_modules():
        for node in ast.walk(parse(module)):
            if isinstance(node, ast.ClassDef):
                size = node.end_lineno - node.lineno + 1 - _signature_continuation_lines(node)
                if size > MAX_CLASS_LINES:
                    problems.append(
                        f"{module.rel}:{node.lineno}: class {node.name} is {size} lines "
                        f"(lines {node.lineno}-{node.end_lineno})"
                    )
    fail_with(f"Classes longer than {MAX_CLASS_LINES} lines:", problems)


def _signature_continuation_lines(cls: ast.ClassDef) -> int:
    """The lines a class's function signatures take beyond their first: from the ``def`` line to
    the line before the body's first statement (or its docstring)."""
    extra = 0
    for node in ast.walk(cls):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            extra += max(0, node.body[0].lineno - node.lineno - 1)
    return extra


# ---- 5. design comments ----


def test_every_module_opens_with_a_design_comment() -> None:
    problems = []
    for module in package_modules():
        lines = module.path.read_text(encoding="utf-8").splitlines()
        number = 0
        if lines and lines[0].startswith("#!"):
            number = 1
        while number < len(lines) and not lines[number].strip():
            number += 1
        if number == len(lines):
            problems.append(f"{module.rel}: is empty; it needs an opening design comment")
            continue
        first = lines[number].strip()
        if first.startswith(('"' * 3, "'" * 3)):
            # The examples open with a docstring instead: it is their design text, and what
            # their --help prints. It must say something.
            docstring = ast.get_docstring(ast.parse(module.path.read_text(encoding="utf-8"))) or ""
            if len(docstring.split()) < 20:
                problems.append(f"{module.rel}:{number + 1}: the opening docstring is too short to explain a design")
            continue
        if not first.startswith("#"):
            shown = first if len(first) <= 60 else first[:57] + "..."
            problems.append(f"{module.rel}:{number + 1}: first line is `{shown}`, not a `#` design comment")
            continue
        block = 0
        while number + block < len(lines) and lines[number + block].strip().startswith("#"):
            block += 1
        if block < 2:
            problems.append(
                f"{module.rel}:{number + 1}: the opening comment is {block} line; a design comment needs at least 2"
            )
    fail_with("Modules without an opening design comment (at least 2 `#` lines):", problems)


# ---- 6. private names stay in their module ----


def is_private(name: str) -> bool:
    return len(name) > 1 and name.startswith("_") and not name.startswith("__")


def private_definitions(tree: ast.Module) -> Set[str]:
    """Private names a module defines: `self._x`/`cls._x` assignments, `def _x`, `class _X`,
    module- and class-level `_x = ...`, and "_x" strings in __slots__."""
    names: Set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(child.name)
            elif (
                isinstance(child, ast.Attribute)
                and isinstance(child.ctx, ast.Store)
                and isinstance(child.value, ast.Name)
                and child.value.id in ("self", "cls")
            ):
                names.add(child.attr)
            elif isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                if not in_function:  # module and class level; a function's locals do not count
                    names.add(child.id)
            elif isinstance(child, (ast.Assign, ast.AnnAssign)):
                targets = child.targets if isinstance(child, ast.Assign) else [child.target]
                if child.value is not None and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in targets):
                    for constant in ast.walk(child.value):
                        if isinstance(constant, ast.Constant) and isinstance(constant.value, str):
                            names.add(constant.value)
            entering = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, in_function or entering)

    visit(tree, False)
    return {name for name in names if is_private(name)}


def test_no_private_name_is_reached_across_modules() -> None:
    problems = []
    for module in package_modules():
        tree = parse(module)
        own = private_definitions(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue
                if node.attr in own or node.attr in STDLIB_PRIVATE_NAMES:
                    continue
                problems.append(
                    f"{module.rel}:{node.lineno}: `{ast.unparse(node)}` reaches {node.attr}, "
                    f"which {module.rel} does not define"
                )
            elif isinstance(node, ast.ImportFrom):
                base = resolve_from_base(module, node)
                if base is None or not in_package(base):
                    continue
                for alias in node.names:
                    if not is_private(alias.name) or known_module(f"{base}.{alias.name}"):
                        continue  # `from . import _client` imports a module, not a private name
                    if (module.rel, base, alias.name) in ALLOWED_PRIVATE_IMPORTS:
                        continue
                    problems.append(
                        f"{module.rel}:{node.lineno}: `{ast.unparse(node)}` imports private {alias.name} from {base}"
                    )
    fail_with(
        "Private names used outside the module that defines them (make the name public, or "
        "move the code that needs it):",
        problems,
    )


# ---- 7. the public surface ----


def test_package_is_typed_and_all_names_exist() -> None:
    problems = []
    if not (PACKAGE_DIR / "py.typed").is_file():
        problems.append(f"{PACKAGE}/py.typed is missing (the package declares itself typed)")
    try:
        package = importlib.import_module(PACKAGE)
    except Exception as exc:  # a broken import is the finding; report it, do not error
        problems.append(f"import {PACKAGE} failed: {type(exc).__name__}: {exc}")
        package = None
    if package is None:
        fail_with(f"Public surface of {PACKAGE}:", problems)
        return
    location = Path(package.__file__).resolve().parent
    if location != PACKAGE_DIR:
        problems.append(f"import {PACKAGE} loaded {location}, not this checkout's {PACKAGE_DIR}")
    names = getattr(package, "__all__", None)
    if names is None:
        problems.append(f"{PACKAGE}/__init__.py defines no __all__")
    else:
        for name in names:
            if not isinstance(name, str):
                problems.append(f"{PACKAGE}.__all__ holds a non-string: {name!r}")
            elif not hasattr(package, name):
                problems.append(f"{PACKAGE}.__all__ names {name!r}, but {PACKAGE}.{name} does not exist")
    fail_with(f"Public surface of {PACKAGE}:", problems)
