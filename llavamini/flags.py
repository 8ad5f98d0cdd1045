"""Command-line flags generated from a verb's signature and its dataclasses' fields.

A verb is a plain function. Each parameter annotated with a dataclass becomes a group of flags,
one per field: `--foo-bar` for `foo_bar`, the field's type as the argparse type (`X | None` as
X, `Literal` as choices, `bool` as a switch, `tuple[X, ...]` / `list[X]` as one or more
values), the parameter's default instance as the defaults (so `chat(model)` from Python and
`llavamini chat --model-path P` agree), required when there is neither. Parameters of other
types have defaults and are for Python callers only (an already loaded model, say).

Field metadata (the keys `help` and `aliases` are also HfArgumentParser's):
- `help`: the flag's help; `aliases`: more option strings (`["--image-folder"]`);
- `flag`: the option string instead of `--foo-bar` (`ModelSpec.path` is `--model-path`);
- `choices`: allowed values of a `str` field;
- `positional`: a positional argument instead of a flag;
- `exclusive`: fields with the same name here are mutually exclusive flags;
- `const_flags`: `{"--load-8bit": "8bit"}`, flags that set the field to a value (mutually
  exclusive with its own flag);
- `check`: `value -> None`, raising `ValueError`; run by argparse (exit 2 naming the flag) and
  by `check_fields` in the dataclass's `__post_init__` (the same rule from Python);
- `renamed_from`: the field's former option strings, refused with a line naming the new one.

A `ValueError` from a dataclass's `__post_init__` ends the command with one line naming the flags
its message mentions.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal

from llavamini.errors import exit_on_command_error


def only(*names: str) -> frozenset[str]:
    """`Annotated[Cls, only("a", "b")]`: a verb exposes just these fields of `Cls` as flags."""
    return frozenset(names)


def check_fields(instance) -> None:
    """Run every field's `check` (metadata) on `instance`; for `__post_init__`."""
    for field in dataclasses.fields(instance):
        check = field.metadata.get("check")
        value = getattr(instance, field.name)
        if check is not None and value is not None:
            check(value)


def option_strings(field: dataclasses.Field) -> list[str]:
    """`["--foo-bar", *aliases]`, or `["foo_bar"]` for a positional argument."""
    if field.metadata.get("positional"):
        return [field.name]
    primary = field.metadata.get("flag") or "--" + field.name.replace("_", "-")
    return [primary, *field.metadata.get("aliases", ())]


def _base_type(hint) -> Any:
    """`X` of `X | None` (and of `Optional[X]`)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _checked(convert: Callable, check: Callable) -> Callable:
    """An argparse type: `convert`, then `check` (its `ValueError` becomes a parse error)."""

    def parse(text: str):
        value = convert(text)
        try:
            check(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error
        return value

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse: "invalid int value"
    return parse


def _argument_kwargs(field: dataclasses.Field, hint, default) -> dict:
    """`add_argument` keywords (besides the option strings and dest) of one field."""
    metadata = field.metadata
    kind = _base_type(hint)
    kwargs: dict[str, Any] = {"help": metadata.get("help")}
    if typing.get_origin(kind) in (list, tuple):
        kind = typing.get_args(kind)[0]
        kwargs["nargs"] = "+"
    if typing.get_origin(kind) is Literal:
        kwargs["choices"] = typing.get_args(kind)
        kind = type(kwargs["choices"][0])
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction if default is True else "store_true"
    else:
        kwargs["type"] = _checked(kind, metadata["check"]) if "check" in metadata else kind
    if "choices" in metadata:
        kwargs["choices"] = metadata["choices"]
    if default is dataclasses.MISSING:
        if not metadata.get("positional"):
            kwargs["required"] = True
    else:
        kwargs["default"] = list(default) if isinstance(default, tuple) else default
    return kwargs


def _field_default(field: dataclasses.Field, instance) -> Any:
    if instance is not None:
        return getattr(instance, field.name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


class RenamedFlag(argparse.Action):
    """A former option string: using it exits with a line naming the flag that replaced it."""

    def __init__(self, *args, new: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} was renamed {self.new}")


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One dataclass parameter of a verb: its class, default instance and exposed fields."""

    name: str
    cls: type
    default: Any  # an instance of `cls`, or None when the parameter has no default
    fields: tuple[dataclasses.Field, ...]

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(f"{self.name} ({self.cls.__name__})")
        hints = typing.get_type_hints(self.cls)
        exclusive: dict[str, Any] = {}
        for field in self.fields:
            kwargs = _argument_kwargs(field, hints[field.name], _field_default(field, self.default))
            if field.metadata.get("positional"):
                group.add_argument(field.name, **kwargs)
                continue
            target = group
            exclusive_name = field.metadata.get("exclusive")
            if exclusive_name is None and "const_flags" in field.metadata:
                exclusive_name = field.name
            if exclusive_name is not None:
                if exclusive_name not in exclusive:
                    exclusive[exclusive_name] = group.add_mutually_exclusive_group()
                target = exclusive[exclusive_name]
            target.add_argument(*option_strings(field), dest=field.name, **kwargs)
            for flag, value in field.metadata.get("const_flags", {}).items():
                target.add_argument(
                    flag,
                    dest=field.name,
                    action="store_const",
                    const=value,
                    help=f"the same as {option_strings(field)[0]} {value}",
                )
            for flag in field.metadata.get("renamed_from", ()):
                group.add_argument(
                    flag,
                    action=RenamedFlag,
                    nargs="?",
                    help=argparse.SUPPRESS,
                    new=option_strings(field)[0],
                )

    def build(self, args: argparse.Namespace, command: str):
        """The instance the flags in `args` describe; exits with one line when it is invalid."""
        hints = typing.get_type_hints(self.cls)
        values = {}
        for field in self.fields:
            value = getattr(args, field.name)
            is_tuple = typing.get_origin(_base_type(hints[field.name])) is tuple
            values[field.name] = tuple(value) if is_tuple and value is not None else value
        try:
            if self.default is None:
                return self.cls(**values)
            return dataclasses.replace(self.default, **values)
        except ValueError as error:
            message = str(error)
            named = [
                f for f in self.fields if f.name in message or f.name.replace("_", " ") in message
            ] or list(self.fields)
            flags = " / ".join(option_strings(field)[0] for field in named)
            raise SystemExit(f"{command}: error: {flags}: {error}") from error


def verb_parameters(function: Callable) -> tuple[Parameter, ...]:
    """The dataclass parameters of `function` (the others must have defaults)."""
    hints = typing.get_type_hints(function, include_extras=True)
    parameters = []
    for parameter in inspect.signature(function).parameters.values():
        cls, exposed = hints.get(parameter.name), None
        if typing.get_origin(cls) is Annotated:
            cls, exposed = typing.get_args(cls)[:2]
        if not dataclasses.is_dataclass(cls):
            if parameter.default is inspect.Parameter.empty:
                raise TypeError(f"{function.__name__}: {parameter.name} needs a dataclass type")
            continue
        default = None if parameter.default is inspect.Parameter.empty else parameter.default
        fields = tuple(
            field
            for field in dataclasses.fields(cls)
            if field.init and (exposed is None or field.name in exposed)
        )
        parameters.append(Parameter(parameter.name, cls, default, fields))
    names = [field.name for parameter in parameters for field in parameter.fields]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:  # one flag each: two dataclasses of a verb may not share a field name
        raise TypeError(f"{function.__name__}: fields {clashes} appear in two of its dataclasses")
    return tuple(parameters)


@dataclasses.dataclass(frozen=True)
class Verb:
    """The `func` of a parsed command: builds the verb's dataclasses from the flags, calls it."""

    function: Callable
    command: str  # the parser's prog, "llavamini eval run", for error messages
    parameters: tuple[Parameter, ...]

    def arguments(self, args: argparse.Namespace) -> dict:
        return {p.name: p.build(args, self.command) for p in self.parameters}

    def __call__(self, args: argparse.Namespace, **python_only):
        """Run the verb; `python_only` are its non-flag parameters (e.g. `loaded=`)."""
        return self.function(**self.arguments(args), **python_only)


def add_flags(parser: argparse.ArgumentParser, function: Callable) -> argparse.ArgumentParser:
    """Add the flags of `function`'s dataclass parameters to `parser`; its `func` calls it."""
    parameters = verb_parameters(function)
    for parameter in parameters:
        parameter.add_flags(parser)
    parser.set_defaults(func=Verb(function, parser.prog, parameters))
    return parser


def parser_kwargs(description: str | None) -> dict:
    """The `ArgumentParser` settings of every `llavamini` parser (no abbreviated flags)."""
    return dict(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )


def add_verb(
    commands,
    name: str,
    function: Callable,
    help: str | None = None,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Add `function` as sub-command `name` of the `commands` subparsers, its flags generated
    from its dataclass parameters; help and description default to its docstring."""
    doc = inspect.getdoc(function) or ""
    summary = doc.split("\n\n")[0].replace("\n", " ")
    parser = commands.add_parser(name, help=help or summary, **parser_kwargs(description or doc))
    return add_flags(parser, function)


def add_verbs(parser: argparse.ArgumentParser, verbs: dict[str, Callable], dest: str) -> None:
    """Add a group of verbs (`eval run`, `eval score`, ...) as sub-commands of `parser`."""
    commands = parser.add_subparsers(dest=dest, required=True)
    for name, function in verbs.items():
        add_verb(commands, name, function)


def start_process() -> None:
    """What every command's process sets up first: logging to stderr. (glibc's malloc settings
    are made where a model is built: `llavamini.utils.allocator`.)"""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")


def standalone_parser(
    target: Callable | dict[str, Callable], prog: str, description: str | None
) -> argparse.ArgumentParser:
    """The parser of `python -m MODULE`: one verb's flags, or a group of verbs."""
    parser = argparse.ArgumentParser(prog=prog, **parser_kwargs(description))
    if callable(target):
        return add_flags(parser, target)
    add_verbs(parser, target, "command")
    return parser


def standalone_main(
    target: Callable | dict[str, Callable],
    prog: str,
    description: str | None,
    argv: list[str] | None = None,
):
    """Run `python -m MODULE [ARGS]`: parse `argv` (default: sys.argv) and call the verb; a
    `CommandError` it raises ends the process with its message."""
    start_process()
    args = standalone_parser(target, prog, description).parse_args(argv)
    with exit_on_command_error():
        return args.func(args)
