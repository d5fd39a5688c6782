"""Arguments from a YAML or JSON file, read as the command line reads them.

`HfArgumentParser.parse_yaml_file` hands the file's values to the dataclasses as they are: `forget_class: cat`
becomes the list `['c', 'a', 't']`, `learning_rate: 1e-4` a string (YAML reads it so) and `save_strategy: no` the
boolean False. Here every value is first converted to its field's declared type as the command line would convert
it (a scalar where a list is expected becomes a one-element list), and a value that has no such reading is refused
with one message naming the file and the key.
"""

import enum
import json
import os
import types
import typing
from dataclasses import fields

import yaml
from transformers.utils import strtobool


class _NoReading(ValueError):
    """A value has no reading as the type tried."""


def read_arguments_file(path: str) -> dict:
    """The mapping of arguments a YAML (`.yaml`, `.yml`) or JSON file holds."""
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    except (ValueError, yaml.YAMLError) as err:
        reason = " ".join(str(err).split())  # one line
        raise ValueError(f"{path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: {reason}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values, like `model_id: timm/resnet50`.")
    return values


def coerce_arguments(values: dict, dataclass_types: typing.Iterable[type], source: str) -> dict:
    """`values` with each one converted to the type its dataclass field declares (keys no field has are left for
    the parser to report)."""
    declared = {}
    for dataclass_type in dataclass_types:
        hints = typing.get_type_hints(dataclass_type)
        for field in fields(dataclass_type):
            if field.init:
                declared.setdefault(field.name, hints[field.name])
    coerced = {}
    for key, value in values.items():
        if key not in declared:
            coerced[key] = value
            continue
        try:
            coerced[key] = _coerce(value, declared[key])
        except _NoReading:
            raise ValueError(
                f"{source}: {key}: expected {_describe(declared[key])}, got {value!r} ({type(value).__name__})."
                + (" YAML reads yes/no/on/off as booleans: quote the value." if isinstance(value, bool) else "")
            ) from None
    return coerced


def _members(annotation) -> tuple:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _coerce(value, annotation):
    """`value` read as `annotation`; raises `_NoReading`."""
    members = _members(annotation)
    if len(members) > 1:
        for member in members:
            if _matches(value, member):
                return value
        for member in members:
            try:
                return _coerce(value, member)
            except _NoReading:
                continue
        raise _NoReading
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is typing.Any or (origin is None and not isinstance(annotation, type)):
        return value
    if origin is list:
        items = value if isinstance(value, (list, tuple)) else [value]  # a scalar is a one-element list
        return [_coerce(item, args[0]) if args else item for item in items]
    if origin is typing.Literal:
        if _matches(value, annotation):
            return value
        raise _NoReading
    if origin is not None or annotation in (dict, tuple):
        if _matches(value, annotation):
            return value
        raise _NoReading
    return _coerce_scalar(value, annotation)


def _coerce_scalar(value, target: type):
    if _matches(value, target):
        return float(value) if target is float else value
    if target is type(None):
        raise _NoReading
    if target is bool:
        if isinstance(value, str) or (isinstance(value, int) and value in (0, 1)):
            try:
                return bool(strtobool(str(value)))
            except ValueError:
                raise _NoReading from None
        raise _NoReading
    if target in (int, float) and isinstance(value, (str, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            raise _NoReading from None
        if target is float:
            return number
        if number.is_integer():
            return int(number)
        raise _NoReading
    if issubclass(target, enum.Enum):
        if isinstance(value, bool) and not value and "no" in {member.value for member in target}:
            return "no"  # YAML's `no` (save_strategy: no)
        raise _NoReading
    if target is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # `forget_class: 3`, `revision: 2024`
    raise _NoReading


def _matches(value, annotation) -> bool:
    """Whether `value` already is of type `annotation` (as a parsed command line would give it)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is typing.Any:
        return True
    if origin is list:
        return isinstance(value, list) and all(_matches(item, args[0]) for item in value) if args else True
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if origin is not None:
        return False
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, annotation) or (
            isinstance(value, str) and value in {member.value for member in annotation}
        )
    return isinstance(annotation, type) and isinstance(value, annotation)


def _describe(annotation) -> str:
    members = [member for member in _members(annotation) if member is not type(None)]
    names = []
    for member in members:
        origin, args = typing.get_origin(member), typing.get_args(member)
        if origin is list:
            names.append(f"a list of {_describe(args[0]) if args else 'values'} (or one of them)")
        elif origin is typing.Literal:
            names.append("one of " + ", ".join(map(repr, args)))
        elif isinstance(member, type) and issubclass(member, enum.Enum):
            names.append("one of " + ", ".join(repr(m.value) for m in member))
        else:
            names.append({bool: "true or false", int: "an integer", float: "a number", str: "a string",
                          dict: "a mapping"}.get(member, getattr(member, "__name__", str(member))))
    return " or ".join(names) + (" or null" if len(members) < len(_members(annotation)) else "")


def parse_arguments_file(parser, path: str) -> tuple:
    """`parser` (an `HfArgumentParser`) applied to the file at `path`, values coerced to their fields' types; a bad
    value raises `ValueError` naming the file."""
    if not os.path.isfile(path):
        raise ValueError(f"Cannot read the arguments file {path}: no such file.")
    values = coerce_arguments(read_arguments_file(path), parser.dataclass_types, path)
    try:
        return parser.parse_dict(values)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
