"""Argparse options from a config dataclass (CleanRL style: one documented dataclass per script)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing


def _field_docs(cls) -> dict[str, str]:
    # Attribute docstrings (a string literal right after a field) document each option.
    docs = {}
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                isinstance(following, ast.Expr) and isinstance(getattr(following, "value", None), ast.Constant):
            docs[node.target.id] = str(following.value.value)
    return docs


def add_dataclass_arguments(parser, cls, skip: tuple[str, ...] = ()) -> None:
    """Add ``--field-name`` options for every field of the dataclass ``cls``."""
    docs = _field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        default = f.default
        help_text = f"{docs.get(f.name, '')} (default: {default!r})"
        if hint is bool:
            parser.add_argument(flag, dest=f.name, action=__import__("argparse").BooleanOptionalAction,
                                default=default, help=help_text)
        elif typing.get_origin(hint) is tuple:
            parser.add_argument(flag, dest=f.name, type=typing.get_args(hint)[0], nargs="+", default=default,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=hint, default=default, help=help_text)


def dataclass_from_args(cls, args, **overrides):
    """Instantiate ``cls`` from parsed arguments."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    for f in dataclasses.fields(cls):
        if isinstance(values.get(f.name), list):
            values[f.name] = tuple(values[f.name])
    return cls(**values)
