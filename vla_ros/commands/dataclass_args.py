"""Argparse options from a config dataclass (CleanRL style: one documented dataclass per script), and recipes.

Every field becomes a ``--field-name`` flag. ``--config FILE`` reads a YAML *recipe*: a mapping of field names
(``batch_size`` or ``batch-size``) to values. A value comes from, in order: the command line, the recipe, the
dataclass default. A recipe naming an unknown field, or a value of the wrong type, is an error naming it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import types
import typing
from pathlib import Path
from typing import Any

_UNSET = None  # flag defaults: "not given on the command line" (the recipe or the dataclass default applies)


def _field_docs(cls) -> dict[str, str]:
    # Attribute docstrings (a string literal right after a field) document each option.
    docs = {}
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                isinstance(following, ast.Expr) and isinstance(getattr(following, "value", None), ast.Constant):
            docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def _plain_type(hint):
    """``str | None`` -> ``str``; other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING \
        else f.default


def add_config_argument(parser) -> None:
    """The ``--config FILE`` option (a YAML recipe)."""
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="YAML recipe: field -> value (e.g. the recipe.yaml beside a shipped model); "
                        "flags given here override it")


def add_dataclass_arguments(parser, cls, skip: tuple[str, ...] = (), choices: dict[str, tuple] | None = None,
                            config: bool = True) -> None:
    """Add ``--field-name`` options for every field of the dataclass ``cls`` (and ``--config``)."""
    docs = _field_docs(cls)
    hints = typing.get_type_hints(cls)
    choices = choices or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = _plain_type(hints[f.name])
        help_text = f"{docs.get(f.name, f.name.replace('_', ' '))} (default: {_default(f)!r})"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %: a field's "85%" is text
        if hint is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=_UNSET,
                                help=help_text)
        elif typing.get_origin(hint) is tuple:
            parser.add_argument(flag, dest=f.name, type=typing.get_args(hint)[0], nargs="+", default=_UNSET,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=hint, default=_UNSET, choices=choices.get(f.name),
                                help=help_text)
    if config:
        add_config_argument(parser)


def _check_value(cls, name: str, value: Any, hint, where: str) -> Any:
    hint = _plain_type(hint)
    if value is None:
        return None
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: {name} must be a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_check_value(cls, name, v, item, where) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {name} must be true or false, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str) and (not isinstance(value, hint) or isinstance(value, bool)):
        raise ValueError(f"{where}: {name} must be {hint.__name__}, got {value!r}")
    return value


def load_recipe(cls, path: str | Path, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Field values of a YAML recipe for ``cls``, checked against its fields and types."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ValueError(f"recipe {path}: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        raise ValueError(f"recipe {path} is not valid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path} must be a mapping of field -> value")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - set(skip)
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise ValueError(f"recipe {path}: unknown field {key!r}; known: {', '.join(sorted(names))}")
        values[name] = _check_value(cls, name, value, hints[name], f"recipe {path}")
    return values


def dataclass_from_args(cls, args, skip: tuple[str, ...] = (), **overrides):
    """Instantiate ``cls``: command-line flags, then the ``--config`` recipe, then the dataclass defaults."""
    recipe = load_recipe(cls, args.config, skip) if getattr(args, "config", None) else {}
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        given = getattr(args, f.name, _UNSET)
        if given is not _UNSET:
            values[f.name] = tuple(given) if isinstance(given, list) else given
        elif f.name in recipe:
            values[f.name] = recipe[f.name]
    values.update(overrides)
    return cls(**values)


def recipe_of(config, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A config dataclass as a recipe mapping (tuples as lists), for writing beside a model."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
            if k not in skip}
