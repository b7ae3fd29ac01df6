# The command layer: a registry of named handlers whose arguments, usage line and help all come
# from the Python signature and docstring, the way argparse and click users expect, and the one
# permission check (check_permission) that every request form goes through.
#
# Work is split by when it happens. Everything that inspects a function (type hints, defaults,
# the usage string) runs once, at registration, and is stored in a compiled Signature. A call
# then only walks that compiled form; commands with no parameters, or only `*args: str`, skip
# binding altogether. Turning a text line into (command, words) is cached per line in the
# registry (Registry.parse): monitoring scripts send the same few lines over and over.
# `inspect` is imported inside the functions that use it: it costs several ms of import time
# and is only needed at registration. Pure code: no sockets, clocks or loggers.
from __future__ import annotations

import enum
from collections.abc import Sequence

TYPE_CHECKING = False  # typing is not imported at run time: it costs import time
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, TypeVar

    _F = TypeVar("_F", bound=Callable[..., Any])

if TYPE_CHECKING:
    import inspect

from ._errors import ConfigError, PermissionDenied, UnknownCommand, UsageError
from ._protocol import needs_quoting, split_words

LEVELS = ("user", "operator", "admin")
LEVEL_RANK = {name: rank for rank, name in enumerate(LEVELS)}


def may_run(conn: Any, command: Command) -> bool:
    """Whether a connection may run (and so see in help) a command: its level and, when the
    server has a token, authentication, unless the command is one a client needs before it."""
    return (conn.authenticated or command.pre_auth) and command.rank <= conn.level


def check_permission(conn: Any, command: Command) -> None:
    """The one permission check: every request form (a text line, a quoted line, JSON with
    cmd or argv, a watched command) calls this before the handler runs, and raises
    PermissionDenied with the reason when ``conn`` may not run ``command``.

    ``conn`` needs ``authenticated`` and ``level`` (a rank). Authentication is checked first:
    before it, a client learns nothing about levels."""
    if not conn.authenticated and not command.pre_auth:
        raise PermissionDenied("authentication required (send 'auth TOKEN')")
    if command.rank > conn.level:
        raise PermissionDenied(f"permission denied: '{command.name}' needs {command.level}")


def level_rank(level: str) -> int:
    try:
        return LEVEL_RANK[level]
    except KeyError:
        raise ConfigError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}") from None


# ---- argument conversion ----

_TRUE = frozenset(("1", "true", "yes", "on", "y", "t"))
_FALSE = frozenset(("0", "false", "no", "off", "n", "f"))


def _to_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected true/false, yes/no, on/off or 1/0")


def _to_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("expected an integer") from None


_INF = float("inf")
_INF_WORDS = frozenset(("inf", "infinity"))
_OUT_OF_RANGE = "number out of range"


def _to_float(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise ValueError("expected a number") from None
    # float() turns digits past a float's range (1e400, or 400 digits) into inf without a word.
    # "inf" spelled out is still taken, as before: handlers that cannot use it check (watch does).
    if abs(number) == _INF and text.strip().lower().lstrip("+-") not in _INF_WORDS:
        raise ValueError(_OUT_OF_RANGE)
    return number


_UNCLEAR = object()  # no choice, or more than one, for a text


def _as_word(value: Any) -> str:
    """A JSON request's non-string value as the word a text request carries for it: its JSON
    spelling. JSON true is the word `true`, not Python's 'True', and {"a": null} stays that,
    not "{'a': None}"; a number is its digits either way (5 is '5')."""
    import json  # lazily, as _wire does; a JSON request has loaded it already

    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):  # not from a JSON request: a direct call_json from Python
        return str(value)


def _spellings(spellings: List[Tuple[str, Any]]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(exact, lowered) lookup tables for one tier of spellings."""
    exact: Dict[str, Any] = {}
    by_lower: Dict[str, Any] = {}
    for text, choice in spellings:
        exact[text] = choice
        # Any case is accepted, but only for a key that one choice alone lowers to: with both
        # "B" and "b" as choices, each is taken as written, and "B" is not an arbitrary pick.
        key = text.lower()
        by_lower[key] = choice if by_lower.get(key, choice) is choice else _UNCLEAR
    return exact, by_lower


def _choice_converter(choices: Sequence[Any]) -> Callable[[Any], Any]:
    # Two tiers: the names (what help lists), then the enum members' values. A name, in any
    # case, is looked up before any value, so that a value spelled like another member's name
    # (`oldest = "newest"`) does not take that name over: what help lists binds what it names.
    names, names_lower = _spellings(
        [(choice.name if isinstance(choice, enum.Enum) else str(choice), choice) for choice in choices]
    )
    values, values_lower = _spellings(
        [(str(choice.value), choice) for choice in choices if isinstance(choice, enum.Enum)]
    )
    expected = "expected one of: " + ", ".join(_choice_names(choices))

    def convert(text: Any) -> Any:
        if not isinstance(text, str):
            for choice in choices:
                for candidate in (choice, choice.value) if isinstance(choice, enum.Enum) else (choice,):
                    # True == 1 in Python, but JSON's true is not the number 1, nor 1 true
                    if candidate == text and isinstance(candidate, bool) is isinstance(text, bool):
                        return choice
            text = _as_word(text)
        choice = names.get(text, _UNCLEAR)
        if choice is not _UNCLEAR:  # the usual case: one lookup
            return choice
        lowered = text.lower()
        choice = names_lower.get(lowered, _UNCLEAR)
        if choice is _UNCLEAR:
            choice = values.get(text, _UNCLEAR)
            if choice is _UNCLEAR:
                choice = values_lower.get(lowered, _UNCLEAR)
                if choice is _UNCLEAR:
                    raise ValueError(expected)
        return choice

    return convert


def _choice_name(choice: Any) -> str:
    return choice.name.lower() if isinstance(choice, enum.Enum) else str(choice)


def _choice_names(choices: Sequence[Any]) -> List[str]:
    names = [_choice_name(choice) for choice in choices]
    if len(set(names)) < len(names):  # enum members named A and a: lowered, the list says "a, a"
        names = [choice.name if isinstance(choice, enum.Enum) else str(choice) for choice in choices]
    return names


class Param:
    __slots__ = ("name", "metavar", "convert", "default", "required", "flag", "choices", "type_name", "nullable")

    def __init__(self, parameter: inspect.Parameter, annotation: Any) -> None:
        import inspect

        self.name = parameter.name
        self.metavar = parameter.name.upper()
        self.default = parameter.default
        self.required = parameter.default is inspect.Parameter.empty
        self.choices: Optional[List[str]] = None
        unwrapped = _unwrap_optional(annotation)
        # JSON can send null; only an Optional parameter, or one defaulting to None, takes it.
        self.nullable = unwrapped is not annotation or parameter.default is None
        annotation = unwrapped
        self.flag = annotation is bool
        self.convert, self.type_name = self._converter_for(annotation)

    def _converter_for(self, annotation: Any) -> Tuple[Callable[[Any], Any], str]:
        import inspect
        import typing

        if annotation is inspect.Parameter.empty or annotation is str or annotation is typing.Any:
            return str, "text"
        if annotation is bool:
            return _to_bool, "boolean"
        if annotation is int:
            return _to_int, "integer"
        if annotation is float:
            return _to_float, "number"
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            members = list(annotation)
            self.choices = _choice_names(members)
            return _choice_converter(members), "choice"
        if typing.get_origin(annotation) is typing.Literal:
            values = list(typing.get_args(annotation))
            self.choices = [str(value) for value in values]
            return _choice_converter(values), "choice"
        if isinstance(annotation, str):
            raise ConfigError(
                f"parameter {self.name!r}: cannot resolve the annotation {annotation!r} "
                "(is it defined inside a function? move it to module level)"
            )
        if typing.get_origin(annotation) is not None or annotation in (list, tuple, set, frozenset, dict):
            # A parameter takes one word of the request. Called on that word as a converter,
            # List[int] raised on every call and list split the word into letters: refuse it here,
            # at registration, and name what does take several values.
            element = typing.get_args(annotation)[:1]
            hint = f"*{self.name}: {getattr(element[0], '__name__', element[0])}" if element else f"*{self.name}"
            raise ConfigError(
                f"parameter {self.name!r}: a parameter takes one word, so {annotation!r} "
                f"cannot be its type; for several values, use {hint}"
            )
        if callable(annotation):
            return annotation, getattr(annotation, "__name__", "value")
        raise ConfigError(f"parameter {self.name!r}: unsupported annotation {annotation!r}")

    def convert_value(self, value: Any) -> Any:
        """Converts one argument, from text or (in a JSON request) from a JSON value."""
        if not isinstance(value, str):
            if value is None:
                if self.nullable:
                    return None
                raise _BadValue(f"bad value for {self.metavar}: null is not allowed")
            if self.convert is str:
                # As a text request's word is (protocol.md): JSON true is 'true', as `tag true`
                # gives, never str(True). Refusing what is not a string would break JSON
                # numbers and booleans sent to free-form words (*args: str, config set).
                return _as_word(value)
            if self.convert is _to_bool and isinstance(value, bool):
                return value
            if self.convert is _to_int and isinstance(value, int) and not isinstance(value, bool):
                return value
            if self.convert is _to_float and isinstance(value, (int, float)) and not isinstance(value, bool):
                try:
                    return float(value)
                except OverflowError:  # a JSON int past a float's range, as the same digits in text
                    raise _BadValue(f"bad value for {self.metavar}: {value!r}: {_OUT_OF_RANGE}") from None
            if self.choices is None:
                value = _as_word(value)
        try:
            return self.convert(value)
        except Exception as exc:  # any type's own complaint (Decimal raises InvalidOperation)
            raise _BadValue(f"bad value for {self.metavar}: {value!r}: {exc}") from None


def _python_call(obj: Any) -> Optional[Callable[..., Any]]:
    """A callable object's __call__, when written in Python; else None. A C type's (and a
    function's own) is a slot wrapper, with neither globals nor annotations."""
    import inspect

    if isinstance(obj, type) or inspect.isroutine(obj):
        return None
    call = inspect.getattr_static(type(obj), "__call__", None)
    return call if inspect.isfunction(call) else None


def _function_of(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The function a registered callable runs, which holds its annotations' module
    (__globals__): a functools.partial's func (however deeply nested) and a callable object's
    __call__ have it; the partial and the object do not."""
    import functools

    while isinstance(fn, functools.partial):
        fn = fn.func
    return _python_call(fn) or fn


def _doc_of(fn: Callable[..., Any]) -> Optional[str]:
    """A callable's docstring, for help: a partial's own is functools.partial's, so its
    function's; a callable object's __call__'s, else its class's."""
    import functools
    import inspect

    while isinstance(fn, functools.partial):
        fn = fn.func
    call = _python_call(fn)
    # call.__doc__ itself: inspect.getdoc(call) would find "Call self as a function." (type's)
    if call is not None and call.__doc__:
        return inspect.cleandoc(call.__doc__)
    return inspect.getdoc(fn)


def _type_hints(fn: Callable[..., Any]) -> Dict[str, Any]:
    import inspect
    import typing

    # By parameter name: those of a partial or a callable object are among its function's.
    function = _function_of(fn)
    try:
        return typing.get_type_hints(function)
    except Exception:
        pass
    # One annotation that cannot be resolved (a class local to a function, under
    # `from __future__ import annotations`) makes get_type_hints give up on all of them, so
    # resolve the others one at a time; Param reports the one that failed by name.
    namespace = getattr(inspect.unwrap(getattr(function, "__func__", function)), "__globals__", {})
    hints: Dict[str, Any] = {}
    for name, parameter in inspect.signature(fn).parameters.items():
        annotation = parameter.annotation
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, dict(vars(typing)), dict(namespace))  # noqa: S307
            except Exception:
                pass
        hints[name] = annotation
    return hints


def _unwrap_optional(annotation: Any) -> Any:
    import types
    import typing

    # `int | None` (Python 3.10+) is a types.UnionType, not a typing.Union; 3.9 has neither it
    # nor the syntax.
    origin = typing.get_origin(annotation)
    if origin is typing.Union or (origin is not None and origin is getattr(types, "UnionType", None)):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


class _BadValue(Exception):
    pass


class _Missing:
    pass


class Signature:
    """What a handler accepts, compiled once from its Python signature."""

    __slots__ = ("positional", "var_positional", "options", "inject", "inject_at", "usage_args", "mode")

    def __init__(self, fn: Callable[..., Any], connection_type: type) -> None:
        import inspect

        hints = _type_hints(fn)
        self.positional: List[Param] = []
        self.var_positional: Optional[Param] = None
        self.options: Dict[str, Param] = {}
        self.inject: Optional[str] = None
        self.inject_at: Optional[int] = None  # where it goes among positional arguments, if there
        for parameter in inspect.signature(fn).parameters.values():
            annotation = hints.get(parameter.name, parameter.annotation)
            # _unwrap_optional: Python 3.9's get_type_hints turns `conn: Connection = None`
            # into Optional[Connection].
            if _unwrap_optional(annotation) is connection_type or annotation == connection_type.__name__:
                self.inject = parameter.name
                if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
                    # def f(conn: Connection, name: str): passing conn by keyword would collide
                    # with the positional arguments that fill its slot.
                    self.inject_at = len(self.positional)
                continue
            if parameter.kind is parameter.VAR_KEYWORD:
                continue
            param = Param(parameter, annotation)
            if parameter.kind is parameter.VAR_POSITIONAL:
                self.var_positional = param
            elif parameter.kind is parameter.KEYWORD_ONLY:
                self.options[parameter.name] = param
            else:
                self.positional.append(param)
        self.usage_args = self._usage()
        # "none" and "raw" let Command.call skip binding entirely, and "none" call_json too (see
        # the module comment).
        if self.positional or self.options or self.inject is not None:
            self.mode = "full"
        elif self.var_positional is None:
            self.mode = "none"
        elif self.var_positional.convert is str:
            self.mode = "raw"
        else:
            self.mode = "full"

    def _usage(self) -> str:
        parts = []
        for param in self.positional:
            parts.append(param.metavar if param.required else f"[{param.metavar}]")
        if self.var_positional is not None:
            parts.append(f"[{self.var_positional.metavar}...]")
        for name, param in self.options.items():
            option = "--" + name.replace("_", "-")
            text = option if param.flag else f"{option} {param.metavar}"
            parts.append(text if param.required else f"[{text}]")
        return " ".join(parts)

    def bind_text(self, words: Sequence[str]) -> Tuple[List[Any], Dict[str, Any]]:
        """Converts the words after the command name into call arguments, or raises _BadValue."""
        positional: List[str] = []
        keywords: Dict[str, Any] = {}
        options = self.options
        # Without options a "--x" word is still an option (an unknown one) unless the command
        # takes free-form *args, whose words may be anything: `watch 1 count --prefix x`.
        parse_options = bool(options) or self.var_positional is None
        index = 0
        count = len(words)
        while index < count:
            word = words[index]
            index += 1
            if word.startswith("--") and parse_options:
                if word == "--":
                    positional.extend(words[index:])
                    break
                name, has_value, text = word[2:].partition("=")
                name = name.replace("-", "_")
                param = options.get(name)
                if param is None and name.startswith("no_") and name[3:] in options and options[name[3:]].flag:
                    if has_value:  # --no-force=no, a double negative: refused, not read as false
                        raise _BadValue(f"option --{name.replace('_', '-')} takes no value")
                    keywords[name[3:]] = False
                    continue
                if param is None:
                    raise _BadValue(f"unknown option --{name.replace('_', '-')}")
                if param.flag and not has_value:
                    keywords[name] = True
                    continue
                if not has_value:
                    if index >= count:
                        raise _BadValue(f"option --{name.replace('_', '-')} needs a value")
                    text = words[index]
                    index += 1
                keywords[name] = param.convert_value(text)
            else:
                positional.append(word)
        return self._convert_positional(positional), self._check_options(keywords)

    def bind_json(self, args: List[Any], kwargs: Dict[str, Any]) -> Tuple[List[Any], Dict[str, Any]]:
        args = list(args)
        keywords: Dict[str, Any] = {}
        by_position = {param.name: index for index, param in enumerate(self.positional)}
        for name, value in kwargs.items():
            if name in self.options:
                keywords[name] = self.options[name].convert_value(value)
            elif name in by_position:
                index = by_position[name]
                while len(args) <= index:
                    args.append(_Missing)
                if args[index] is not _Missing:
                    raise _BadValue(f"{self.positional[index].metavar} given twice")
                args[index] = value
            else:
                raise _BadValue(f"unknown argument {name!r}")
        return self._convert_positional(args), self._check_options(keywords)

    def _convert_positional(self, values: List[Any]) -> List[Any]:
        params = self.positional
        if len(values) > len(params) and self.var_positional is None:
            raise _BadValue(f"too many arguments (expected at most {len(params)})")
        converted = []
        for index, param in enumerate(params):
            if index >= len(values) or values[index] is _Missing:
                if param.required:
                    raise _BadValue(f"missing {param.metavar}")
                converted.append(param.default)
            else:
                converted.append(param.convert_value(values[index]))
        if self.var_positional is not None:
            extra = self.var_positional
            converted.extend(extra.convert_value(value) for value in values[len(params) :])
        return converted

    def _check_options(self, keywords: Dict[str, Any]) -> Dict[str, Any]:
        for name, param in self.options.items():
            if param.required and name not in keywords:
                raise _BadValue(f"missing --{name.replace('_', '-')}")
        return keywords


class Command:
    """One registered command. ``name`` may have several words (``show stats``)."""

    __slots__ = ("name", "fn", "level", "rank", "hidden", "summary", "doc", "signature", "usage", "pre_auth")

    def __init__(
        self,
        name: str,
        fn: Callable[..., Any],
        *,
        help: Optional[str] = None,
        level: str = "user",
        hidden: bool = False,
        connection_type: type,
        pre_auth: bool = False,
        usage: Optional[str] = None,
    ) -> None:
        words = name.split()
        if not words:
            raise ConfigError("a command needs a name")
        self.name = " ".join(words)
        self.fn = fn
        self.level = level
        self.rank = level_rank(level)
        self.hidden = hidden
        self.pre_auth = pre_auth
        self.doc = (help if help is not None else _doc_of(fn) or "").strip()
        self.summary = self.doc.splitlines()[0] if self.doc else ""
        self.signature = Signature(fn, connection_type)
        # ``usage``: the words after the name, for a handler that checks its arguments itself
        # and so accepts more than it takes (auth declares *token, so that a token starting
        # with "--" is not read as an option, yet needs exactly one). help, the binding errors
        # and the handler's own (usage_error) then all print this one line.
        arguments = self.signature.usage_args if usage is None else " ".join(usage.split())
        self.usage = f"{self.name} {arguments}".rstrip()

    def usage_error(self, detail: str) -> UsageError:
        """The error for arguments that do not fit, ``usage: USAGE (detail)``, with the usage
        line that help shows: for a handler's own checks, so that the two never differ."""
        return UsageError(f"usage: {self.usage} ({detail})")

    def call(self, args: Sequence[str], connection: Any) -> Any:
        signature = self.signature
        mode = signature.mode
        if mode == "none":
            if args:
                raise self.usage_error("takes no arguments")
            return self.fn()
        if mode == "raw":
            return self.fn(*args)
        try:
            positional, keywords = signature.bind_text(args)
        except _BadValue as exc:
            raise self.usage_error(str(exc)) from None
        return self._invoke(positional, keywords, connection)

    def call_json(self, args: List[Any], kwargs: Dict[str, Any], connection: Any) -> Any:
        if not args and not kwargs and self.signature.mode == "none":  # as call(): nothing to bind
            return self.fn()
        try:
            positional, keywords = self.signature.bind_json(args, kwargs)
        except _BadValue as exc:
            raise self.usage_error(str(exc)) from None
        return self._invoke(positional, keywords, connection)

    def _invoke(self, positional: List[Any], keywords: Dict[str, Any], connection: Any) -> Any:
        signature = self.signature
        if signature.inject_at is not None:
            positional.insert(signature.inject_at, connection)
        elif signature.inject is not None:
            keywords[signature.inject] = connection
        return self.fn(*positional, **keywords)

    def help_text(self) -> str:
        lines = [f"usage: {self.usage}"]
        signature = self.signature
        # In the usage line's order: positional, *args (`def pick(*modes: Mode)`), options
        params = list(signature.positional)
        if signature.var_positional is not None:
            params.append(signature.var_positional)
        params.extend(signature.options.values())
        choices = [f"  {param.metavar}: one of {', '.join(param.choices)}" for param in params if param.choices]
        lines.extend(choices)
        if self.doc:
            lines.append("")
            lines.append(self.doc)
        return "\n".join(lines)


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance where swapping two neighbouring characters also costs 1."""
    previous2: List[int] = []
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            cost = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            if i > 1 and j > 1 and char_a == b[j - 2] and a[i - 2] == char_b:
                cost = min(cost, previous2[j - 2] + 1)
            current.append(cost)
        previous2, previous = previous, current
    return previous[-1]


_CACHE_SIZE = 512  # entries in the registry's line cache; a full cache is cleared


class Registry:
    """Commands by name, with multi-word commands grouped under their first word."""

    def __init__(self, connection_type: type) -> None:
        self._connection_type = connection_type
        self.commands: Dict[str, Command] = {}
        self._groups: Dict[str, List[str]] = {}  # first word -> names of its multi-word commands
        self._longest = 1
        # Request line -> (command, argument words), for the lines parse() splits with
        # str.split (no quoting): monitoring scripts repeat the same few lines, so this skips the
        # split and the lookup. Cleared whenever the command set changes, and when full. The
        # server's caches=False switch turns it off, to run the suite on the uncached path.
        self.line_cache: Optional[Dict[str, Tuple[Command, Tuple[str, ...]]]] = {}
        # Names a registration may take over without replace=True: the builtins, which a host
        # may not know it is shadowing (its own `stats`, or a faster `echo`).
        self._builtin_names: Set[str] = set()

    def add(
        self, name: str, fn: Callable[..., Any], *, replace: bool = False, builtin: bool = False, **options: Any
    ) -> Command:
        """Registers ``fn`` as command ``name``.

        A name the host registered already is refused unless ``replace`` is true: two objects
        given to add_commands() with a method of the same name would otherwise lose one command
        without a word. A builtin is replaced without asking.
        """
        command = Command(name, fn, connection_type=self._connection_type, **options)
        existing = self.commands.get(command.name)
        if existing is not None and not replace and command.name not in self._builtin_names:
            raise ConfigError(
                f"command {command.name!r} is already registered (to "
                f"{getattr(existing.fn, '__qualname__', existing.fn)!r}); "
                "pass replace=True to replace it"
            )
        if builtin:
            self._builtin_names.add(command.name)
        else:
            self._builtin_names.discard(command.name)
        if self.line_cache is not None:
            self.line_cache.clear()
        self.commands[command.name] = command
        words = command.name.split()
        if len(words) > 1:
            names = self._groups.setdefault(words[0], [])
            if command.name not in names:
                names.append(command.name)
            self._longest = max(self._longest, len(words))
        return command

    def remove(self, name: str) -> None:
        if self.line_cache is not None:
            self.line_cache.clear()
        command = self.commands.pop(" ".join(name.split()))
        self._builtin_names.discard(command.name)
        words = command.name.split()
        if len(words) > 1:
            self._groups[words[0]].remove(command.name)
            if not self._groups[words[0]]:
                del self._groups[words[0]]

    def parse(self, line: str, conn: Any = None) -> Tuple[Optional[Command], Sequence[str]]:
        """The command a text request line names, and its argument words; (None, []) for a
        line with no words. Raises ParseError for an unbalanced quote and UnknownCommand (its
        suggestions limited to what ``conn`` may run) for a name nobody registered. From the
        cache, the words are its tuple (immutable: no caller can change the next request's)."""
        cache = self.line_cache
        if cache is not None:
            entry = cache.get(line)
            if entry is not None:
                return entry
        plain = needs_quoting(line) is None  # then the same line always means the same words
        words = line.split() if plain else split_words(line)
        if not words:
            return None, []
        command = None if words[0] in self._groups else self.commands.get(words[0])
        if command is not None:  # a one-word command, found without resolve()'s search
            args = words[1:]
        else:
            command, args = self.resolve(words, conn)
        if cache is None or not plain:
            return command, args
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        entry = cache[line] = (command, tuple(args))
        return entry

    def resolve(self, words: List[str], conn: Any = None) -> Tuple[Command, List[str]]:
        """The command named by the first words, and the words left over as its arguments.

        An unknown name raises UnknownCommand; given ``conn``, its "did you mean" suggests only
        commands that connection may run.
        """
        first = words[0]
        if first in self._groups:
            for size in range(min(self._longest, len(words)), 1, -1):
                command = self.commands.get(" ".join(words[:size]))
                if command is not None:
                    return command, words[size:]
        command = self.commands.get(first)
        if command is not None:
            return command, words[1:]
        raise self.unknown(words, None if conn is None else (lambda command: may_run(conn, command)))

    def unknown(self, words: List[str], allowed: Optional[Callable[[Command], bool]] = None) -> UnknownCommand:
        first = words[0]
        if first in self._groups and self._suggestible(first, allowed):
            if len(words) == 1:
                return UnknownCommand(f"incomplete command '{first}'; try 'help {first}'")
            name = " ".join(words[:2])
            candidates = self._groups[first]
        else:
            name = first
            candidates = list(self.commands) + list(self._groups)
        import difflib  # lazily: only a mistyped command pays for it

        # Only names the client could use: no hidden commands, and none above its level or
        # (before auth) none at all that it would be refused, so a guess learns nothing.
        names = [c for c in candidates if self._suggestible(c, allowed)]
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        if close:
            # difflib does not see a transposition as one slip ('stauts' scores closer to
            # 'stats' than to 'status'), so rank its candidates by edit distance, then by length.
            best = min(close, key=lambda c: (_edit_distance(name, c), abs(len(c) - len(name))))
            return UnknownCommand(f"unknown command '{name}'; did you mean '{best}'?")
        return UnknownCommand(f"unknown command '{name}' (try 'help')")

    def _suggestible(self, name: str, allowed: Optional[Callable[[Command], bool]]) -> bool:
        command = self.commands.get(name)
        if command is not None:
            return not command.hidden and (allowed is None or allowed(command))
        # The first word of a group: worth suggesting if any of its commands is.
        return any(self._suggestible(member, allowed) for member in self._groups.get(name, ()))

    def visible(self, allowed: Callable[[Command], bool]) -> List[Command]:
        return sorted(
            (command for command in self.commands.values() if not command.hidden and allowed(command)),
            key=lambda command: command.name,
        )

    def help(self, topic: List[str], allowed: Callable[[Command], bool]) -> str:
        if not topic:
            return self._help_index(allowed)
        name = " ".join(topic)
        command = self.commands.get(name)
        if command is not None and allowed(command):
            return command.help_text()
        if len(topic) == 1 and topic[0] in self._groups:
            members = [self.commands[n] for n in sorted(self._groups[topic[0]])]
            members = [m for m in members if allowed(m) and not m.hidden]
            if members:
                return self._listing(members, header=f"Subcommands of '{topic[0]}':")
        if command is not None and not command.hidden:
            raise PermissionDenied(f"no help for '{name}' at this connection's level")
        # `help ping extra`: a command, and more words. No name has more words than the longest,
        # so only prefixes up to that are tried: joining every prefix of a long topic (help is
        # pre-auth) cost O(n^2) in one request.
        for words in range(min(len(topic) - 1, self._longest), 0, -1):
            prefix = self.commands.get(" ".join(topic[:words]))
            if prefix is not None and allowed(prefix) and not prefix.hidden:
                # In the usage line of the help command registered (a host's own, if it
                # replaced the builtin), as help shows it.
                helper = self.commands.get("help")
                detail = f"try 'help {prefix.name}'"
                raise UsageError(detail) if helper is None else helper.usage_error(detail)
        raise self.unknown(topic, allowed)

    def _help_index(self, allowed: Callable[[Command], bool]) -> str:
        commands = self.visible(allowed)
        heads: List[str] = []
        for command in commands:
            head = command.name.split()[0]
            if head not in heads:
                heads.append(head)
        listing = self._listing(commands, header="Commands: " + " ".join(heads))
        return listing + "\nType 'help COMMAND' for details."

    @staticmethod
    def _listing(commands: List[Command], header: str) -> str:
        width = max(len(command.usage) for command in commands)
        width = min(width, 40)
        lines = [header]
        for command in commands:
            lines.append(f"  {command.usage:<{width}}  {command.summary}".rstrip())
        return "\n".join(lines)


_OPTIONS_ATTRIBUTE = "_reactor_mgmt_options"


def command_options(**options: Any) -> Callable[[_F], _F]:
    """Sets registration options (name, level, hidden, help, usage) on a method for add_commands()."""

    def decorate(fn: _F) -> _F:
        setattr(fn, _OPTIONS_ATTRIBUTE, options)
        return fn

    return decorate


def methods_as_commands(
    obj: Any, *, level: Optional[str] = None, replace: bool = False
) -> List[Tuple[str, Callable[..., Any], Dict[str, Any]]]:
    """(name, method, options) for every public method of ``obj`` (for a module, every public
    function defined in it), with the options ``@command_options`` set on it."""
    import inspect  # lazily: registration only, and it is slow to import

    found: List[Tuple[str, Callable[..., Any], Dict[str, Any]]] = []
    for attribute in sorted(dir(obj)):
        if attribute.startswith("_"):
            continue
        # Methods only: reading a property would run its code, and a nested class or a
        # callable attribute is not a command.
        if isinstance(inspect.getattr_static(obj, attribute, None), property):
            continue
        method = getattr(obj, attribute)
        if not (inspect.ismethod(method) or inspect.isfunction(method)):
            continue
        if inspect.ismodule(obj) and getattr(method, "__module__", None) != obj.__name__:
            continue  # a function the module imported is not one of its commands
        options = dict(getattr(method, _OPTIONS_ATTRIBUTE, {}))
        name = options.pop("name", attribute.replace("_", " "))
        if level is not None:
            options.setdefault("level", level)
        if replace:
            options.setdefault("replace", True)
        found.append((name, method, options))
    return found
