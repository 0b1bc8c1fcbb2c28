"""Options objects: one coercion, and command-line flags generated from their fields.

An options dataclass is the one place an option is declared. :func:`coerce` turns what a
user or a saved ``run.json`` gives (the object, a dict of some of its fields, a count, a
flag) into it; a field declared with :func:`cli` metadata is also a command-line flag, so
adding an option to the command line, to its parser and to the command line the advice
prints is one edit, the field itself::

    @dataclass(frozen=True)
    class TrainingOptions:
        max_epochs: int = field(default=50, metadata=cli("training epochs at most", always=True))

    add_flags(parser, defaults)                 # --max-epochs, type int, default from ``defaults``
    config = from_flags(args, defaults)         # the parsed values, back into the nested objects
    argv = to_flags(config, defaults)           # ["--max-epochs", "100", ...] (changed or ``always``)

Nested options objects are walked: a field whose value is a dataclass contributes the flags
of its own fields; the flag is the field's name with dashes unless :func:`cli` names one.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def cli(help: str, *, flag: str | None = None, always: bool = False, **argparse_kwargs: Any) -> dict[str, Any]:
    """Field metadata making the field a command-line flag.

    Args:
        help: the flag's help text.
        flag: its name (``"--committee"``); default: ``--`` and the field's name with dashes.
            A ``--no-...`` flag switches a field off (the field becomes ``False``).
        always: written by :func:`to_flags` even when the value is the default (the command
            line the advice prints then shows it, ready to be changed).
        argparse_kwargs: passed to ``add_argument`` (``choices``, ``metavar``, ``nargs``,
            ``type``, ``required``); ``type`` defaults to the default value's type. Besides
            them, ``parse`` (a function) turns the parsed string into the field's value and
            ``show`` (a function) the field's value into the flag's (``"none"`` for ``None``).
    """
    return {"cli": {"help": help, "flag": flag, "always": always, **argparse_kwargs}}


def coerce(cls: type[T], value: Any, count_field: str | None = None) -> T | None:
    """``value`` as a ``cls``: one already (kept), ``None`` or ``True`` (the defaults),
    ``False`` (``None``: switched off), a dict of some of its fields (as ``run.json`` holds
    them; lists become tuples), or a number (its ``count_field``, e.g. a committee's size).

    Raises:
        TypeError: a dict with names that are not fields of ``cls`` (the message lists them),
            or a value of another kind.
    """
    if isinstance(value, cls):
        return value
    if value is None or value is True:
        return cls()
    if value is False:
        return None
    if isinstance(value, dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise TypeError(f"unknown {cls.__name__} option(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
    if count_field is not None and isinstance(value, int | float):
        return cls(**{count_field: int(value)})
    raise TypeError(f"cannot make a {cls.__name__} of {value!r}")


def flag_fields(obj: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dataclasses.Field, dict]]:
    """``(path, field, cli metadata)`` of every flag of ``obj`` and of the options objects
    it holds, in field order; ``path`` leads from ``obj`` to the field."""
    for f in dataclasses.fields(obj):
        meta = f.metadata.get("cli")
        value = getattr(obj, f.name)
        if meta is not None:
            yield (*path, f.name), f, meta
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from flag_fields(value, (*path, f.name))


#: :func:`cli` metadata that is not ``add_argument``'s
_NOT_ARGPARSE = ("help", "flag", "always", "parse", "show")


def _flag(path: tuple[str, ...], meta: dict) -> str:
    return meta["flag"] or "--" + path[-1].replace("_", "-")


def _dest(path: tuple[str, ...], meta: dict) -> str:
    return _flag(path, meta).lstrip("-").replace("-", "_")


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


def add_flags(parser: argparse.ArgumentParser, defaults: Any) -> None:
    """One ``add_argument`` per flag field of ``defaults`` (an instance: its values are the
    flags' defaults)."""
    for path, _, meta in flag_fields(defaults):
        flag, default = _flag(path, meta), _get(defaults, path)
        kwargs = {k: v for k, v in meta.items() if k not in _NOT_ARGPARSE}
        if "show" in meta:
            default = meta["show"](default)
        kwargs["help"] = meta["help"]
        if flag.startswith("--no-"):
            kwargs["action"] = "store_true"
        elif "nargs" in kwargs:
            kwargs.setdefault("default", list(default or []))
        elif not kwargs.get("required"):
            kwargs["default"] = default
            if "type" not in kwargs and isinstance(default, int | float) and not isinstance(default, bool):
                kwargs["type"] = type(default)
        parser.add_argument(flag, dest=_dest(path, meta), **kwargs)


def from_flags(args: argparse.Namespace, defaults: Any) -> dict[str, Any]:
    """The parsed flags as keyword arguments of ``type(defaults)``: top-level fields as they
    are, nested options objects rebuilt from ``defaults``' own with the flags' values."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, _, meta in flag_fields(defaults):
        value = getattr(args, _dest(path, meta))
        default = _get(defaults, path)
        if _flag(path, meta).startswith("--no-"):
            value = False if value else default
        elif isinstance(value, list):  # nargs: an empty list is the default (often None)
            value = (tuple(value) if isinstance(default, tuple) else value) if value else default
        elif "parse" in meta and isinstance(value, str):
            value = meta["parse"](value)
        if len(path) == 1:
            top[path[0]] = value
        else:  # one level of nesting is what the package's options have
            nested.setdefault(path[0], {})[path[-1]] = value
    for name, values in nested.items():
        top[name] = dataclasses.replace(getattr(defaults, name), **values)
    return top


def to_flags(obj: Any, defaults: Any) -> list[str]:
    """The flags that rebuild ``obj`` from ``defaults``: those whose value differs, and the
    ``always`` ones (``None`` values and switched-on ``--no-`` flags are left out)."""
    argv: list[str] = []
    for path, _, meta in flag_fields(defaults):
        flag = _flag(path, meta)
        try:
            value = _get(obj, path)
        except AttributeError:  # a nested object switched off (e.g. None)
            value = None
        default = _get(defaults, path)
        if flag.startswith("--no-"):
            if value is False or value is None:
                argv.append(flag)
            continue
        if value == default and not meta["always"]:
            continue
        if "show" in meta:
            value = meta["show"](value)
        if value is None:
            continue
        if isinstance(value, list | tuple):
            if value:
                argv += [flag, *map(str, value)]
        else:
            argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return argv
