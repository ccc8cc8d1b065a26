"""The config's schema is the code itself: every node with a ``_target_`` is checked against
the signature and annotations of the class or function it names, so a new argument needs no
second declaration, and a misspelled key or a value of the wrong type fails in one line naming
the key instead of as a ``TypeError`` deep inside `hydra.utils.instantiate`.

`lit_align.config.validate` runs these checks with its own (ranges, combinations).
"""

from __future__ import annotations

import ast
import collections.abc
import difflib
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
from hydra._internal.utils import _locate
from omegaconf import DictConfig, ListConfig, OmegaConf

from lit_align.errors import ConfigError

ABSENT = object()

# Hydra's own keys in a node with a ``_target_``; never arguments of the target.
_HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})

# Arguments `train` passes at instantiate time. The targets require them, and a value in the
# config would be silently replaced by `train`'s (Hydra merges call arguments over the node).
_SUPPLIED: dict[str, tuple[str, ...]] = {
    "data": ("tokenizer", "batch_format", "eval_by_generation"),
    "model.policy": ("tokenizer",),
    "trainer": ("logger", "callbacks"),
    "rollout": ("reward",),
}


def locate_target(node: Any) -> Any:
    """The class or function a node's ``_target_`` names; ``None`` for a node without one."""
    if not isinstance(node, DictConfig) or not isinstance(node.get("_target_"), str):
        return None
    return _locate(node._target_)  # importable: `check_targets` has run


# -- targets and their signatures ---------------------------------------------------------------


def check_targets(cfg: DictConfig) -> None:
    """Each key of a ``_target_`` node must be an argument of the target, of its annotated type."""
    for path, node in _target_nodes(cfg):
        name = node._target_
        try:
            signature = _signature(name)
        except ImportError as error:
            reason = str(error.__cause__ or error).splitlines()[0]
            raise ConfigError(f"{path}._target_={name} cannot be imported: {reason}") from None
        supplied = _SUPPLIED.get(path, ())
        keys = [key for key in node if key not in _HYDRA_KEYS]
        for key in keys:
            dotted = f"{path}.{key}".lstrip(".")
            if key in supplied:
                raise ConfigError(f"{dotted} is passed by train at run time, not set in the config: remove it")
            if key in signature.params:
                hint, default = signature.params[key]
                check_type(node, key, hint, default, dotted)
            elif not signature.open:
                close = difflib.get_close_matches(key, [p for p in signature.params if p not in supplied], n=1)
                suggestion = f" (did you mean {close[0]}?)" if close else ""
                raise ConfigError(f"{dotted} is not an argument of {name}{suggestion}")
        if not node.get("_partial_") and "_args_" not in node:
            # A partial's remaining arguments come at call time (the optimizer's parameters).
            unset = [p for p in signature.required if p not in keys and p not in supplied]
            if unset:
                raise ConfigError(f"{path}.{unset[0]} must be set: {name} has no default for it".lstrip("."))


def _target_nodes(node: Any, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    """``(dotted path, node)`` for every node with a ``_target_``, nested ones included (a
    composite reward's parts, the objective's ``kl``), without resolving interpolations."""
    if isinstance(node, DictConfig):
        if "_target_" in node and isinstance(node.get("_target_"), str):
            yield path, node
        children = ((str(key), node._get_node(key)) for key in node)
    elif isinstance(node, ListConfig):
        children = ((str(i), node._get_node(i)) for i in range(len(node)))
    else:
        return
    for key, child in children:
        yield from _target_nodes(child, f"{path}.{key}".lstrip("."))


@dataclass(frozen=True)
class _Signature:
    params: dict[str, tuple[Any, Any]]  # keyword argument -> (annotation or _UNKNOWN, default)
    required: tuple[str, ...]  # arguments without a default
    open: bool  # takes **kwargs that go where we cannot follow: any other key is accepted


_UNKNOWN = object()


@functools.cache
def _signature(name: str) -> _Signature:
    """The keyword arguments ``name`` accepts. A class's ``**kwargs`` that its ``__init__``
    forwards to ``super().__init__`` are the base class's arguments, so the chain of base
    classes is followed until an ``__init__`` without ``**kwargs``; ``**kwargs`` that go
    elsewhere (a library's options), or a signature that cannot be read, leave the target open."""
    target = _locate(name)
    inits = [vars(k)["__init__"] for k in getattr(target, "__mro__", ()) if "__init__" in vars(k) and k is not object]
    # A class built by its own __new__ (a NamedTuple) or without an __init__: its signature as
    # `inspect` reads it, with no base chain to follow.
    is_class = inspect.isclass(target) and bool(inits) and target.__new__ is object.__new__
    chain = inits if is_class else [target]
    params: dict[str, tuple[Any, Any]] = {}
    required: list[str] = []
    explicit: set[str] = set()  # a subclass's own arguments: it passes them to its base itself
    for function in chain:
        try:
            parameters = list(inspect.signature(function).parameters.values())[1 if is_class else 0 :]
        except (TypeError, ValueError):  # a builtin without a readable signature
            return _Signature(params, tuple(required), open=True)
        # A class's own annotations are its attributes, not necessarily its arguments.
        hints = {} if inspect.isclass(function) else _hints(function)
        kwargs = None
        for p in parameters:
            if p.kind is p.VAR_KEYWORD:
                kwargs = p.name
            elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in explicit:
                params[p.name] = (hints.get(p.name, _UNKNOWN), p.default)
                required += [p.name] if p.default is p.empty else []
        explicit |= {p.name for p in parameters}
        if kwargs is None:
            return _Signature(params, tuple(required), open=False)
        if not is_class or not _forwards_to_base(function, kwargs):
            return _Signature(params, tuple(required), open=True)
    # The chain forwarded **kwargs up to `object.__init__`, which takes none.
    return _Signature(params, tuple(required), open=False)


def _forwards_to_base(function: Callable[..., Any], kwargs: str) -> bool:
    """Whether ``function`` calls ``super().__init__(..., **kwargs)`` (or ``Base.__init__``)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(function))))
    except (OSError, TypeError, SyntaxError):
        return False
    return any(
        isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "__init__"
        and any(k.arg is None and isinstance(k.value, ast.Name) and k.value.id == kwargs for k in call.keywords)
        for call in ast.walk(tree)
    )  # fmt: skip


def _hints(function: Callable[..., Any]) -> dict[str, Any]:
    """The resolved annotations; one at a time when some cannot be resolved (a library may name
    types it imports only for type checkers), leaving those unchecked."""
    try:
        return typing.get_type_hints(function)
    except Exception:  # NameError, TypeError, AttributeError…: whatever evaluating them raises
        pass
    function = inspect.unwrap(function)
    namespace = getattr(function, "__globals__", {})
    hints = {}
    for key, annotation in getattr(function, "__annotations__", {}).items():
        try:
            hints[key] = eval(annotation, namespace) if isinstance(annotation, str) else annotation
        except Exception:
            continue
    return hints


# -- values against annotations -----------------------------------------------------------------


def check_type(node: DictConfig, key: str, hint: Any, default: Any = ABSENT, dotted: str | None = None) -> None:
    """Refuses the value at ``key`` under ``node`` (a dotted path unless ``dotted``, the key's
    full name, is given) when ``hint`` rules it out."""
    if hint is _UNKNOWN:
        return
    try:
        value = node[key] if dotted else OmegaConf.select(node, key, default=ABSENT)
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
    except Exception:  # an interpolation that resolves only inside a Hydra app (${hydra:...})
        return
    if value is ABSENT or (value is None and default is None):  # `x: int = None` allows None
        return
    if _matches(value, hint) is False:
        raise ConfigError(f"{dotted or key} must be {_describe(hint)}, got {value!r}")


def holds(ok: Callable[[Any], bool], value: Any) -> bool:
    """Whether ``value`` passes the range test ``ok``; false where it cannot be compared (a
    string where a number belongs)."""
    try:
        return bool(ok(value))
    except TypeError:
        return False


_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _matches(value: Any, hint: Any) -> bool | None:
    """Whether a config value (a primitive, list or dict) fits ``hint``: ``None`` where the
    annotation cannot tell (a class, a callable), which is accepted."""
    if isinstance(value, dict) and "_target_" in value:
        return None  # becomes an object: its type is the target's business
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union or origin is types.UnionType:
        results = [_matches(value, arg) for arg in args]
        return True if True in results else None if None in results else False
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:  # YAML's true/false; a 0 or 1 here is more likely a slip than meant
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    base = origin or hint
    if base in _SEQUENCES:
        if not isinstance(value, list):
            return False
        if base is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and _all(_matches(v, a) for v, a in zip(value, args, strict=True))
        return _all(_matches(v, args[0]) for v in value) if args else True
    if base in _MAPPINGS:
        if not isinstance(value, dict):
            return False
        return _all(_matches(v, args[1]) for v in value.values()) if len(args) == 2 else True
    if inspect.isclass(base) and issubclass(base, torch.Tensor):
        return False  # no config value is a tensor (torch annotates lr as float | Tensor)
    return None


def _all(results: Iterable[bool | None]) -> bool:
    return all(result is not False for result in results)


def _describe(hint: Any) -> str:
    """``hint`` as a message says it: "a float", "an int or null", "one of 'sigmoid', 'ipo'",
    "a list of 2 values, each a float"."""
    members = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    words = []
    for member in members:
        base, args = typing.get_origin(member) or member, typing.get_args(member)
        if base in _SEQUENCES and base is tuple and args and args[-1] is not Ellipsis:
            words.append(f"a list of {len(args)} values, each {' or '.join(dict.fromkeys(map(_describe, args)))}")
        elif base in _SEQUENCES and args:
            words.append(f"a list, each value {_describe(args[0])}")
        elif base in _MAPPINGS and len(args) == 2:
            words.append(f"a mapping, each value {_describe(args[1])}")
        elif base in _NAMES:
            words.append(_NAMES[base])
    literals = [arg for m in members if typing.get_origin(m) is Literal for arg in typing.get_args(m)]
    words += [f"one of {', '.join(map(repr, literals))}"] if literals else []
    words += ["null"] if type(None) in members else []
    return " or ".join(dict.fromkeys(words)) or f"a {getattr(hint, '__name__', hint)}"


_NAMES: dict[Any, str] = {
    bool: "a bool (true or false)", int: "an int", float: "a float", str: "a string",
    **{t: "a list" for t in _SEQUENCES}, **{t: "a mapping" for t in _MAPPINGS},
}  # fmt: skip
