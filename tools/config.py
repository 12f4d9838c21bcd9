"""`--config FILE` for argparse subcommands: options read from a flat TOML file.

Owns the mapping from a TOML file to a subcommand's options, and the two-pass parse
that applies it. Every long option `--some-flag` has the key `some-flag` (or
`some_flag`); values go through the option's own `type`, so the file is validated
exactly like the command line. Precedence: command line, then file, then the
parser's defaults (including ones taken from the environment). Problems with the
file raise ConfigError, whose message names the file and the key.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import itertools
import json
import sys
import tomllib
from typing import Any, Iterator, Sequence

_CHOSEN = "_config_chosen_parser"  # marks which subparser ran in the first pass
_FLAGS = (argparse._StoreConstAction, argparse.BooleanOptionalAction)  # store_true/false are store_const
_EXPECTED = ((int, "an integer"), (float, "a number"), (str, "a string"), (None, "a string"))


class ConfigError(ValueError):
    """A config file that cannot be read or does not fit the subcommand's options."""


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Give one subcommand parser a `--config FILE` option."""
    parser.add_argument("--config", metavar="FILE", help="read options from this TOML file; flags given here override it")


def parse_args_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse `argv` with `parser` (which has subcommands), applying the chosen subcommand's --config file.

    Raises ConfigError for a bad file; command-line errors exit through argparse as usual.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    commands = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if commands is None:
        return parser.parse_args(args)
    first = _first_pass(parser, commands, args)
    sub: argparse.ArgumentParser | None = getattr(first, _CHOSEN, None)
    config = _config_action(sub) if sub is not None else None
    path = getattr(first, config.dest, None) if config is not None else None
    if sub is None or path is None:
        return parser.parse_args(args)
    values = _file_values(str(path), sub, first)
    with _temporarily(_defaults_changes(sub, values)):
        return parser.parse_args(args)


@contextlib.contextmanager
def _temporarily(changes: list[tuple[object, str, object]]) -> Iterator[None]:
    """Set attributes for the duration of the block, then put the old values back."""
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in changes]
    try:
        for obj, name, value in changes:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


def _first_pass(parser: argparse.ArgumentParser, commands: argparse._SubParsersAction, args: list[str]) -> argparse.Namespace:
    """Parse what the command line says, with nothing required, to learn the subcommand and --config."""
    subs = list({id(sub): sub for sub in commands.choices.values()}.values())
    changes: list[tuple[object, str, object]] = [(a, "required", False) for sub in subs for a in sub._actions]
    changes += [(sub, "_defaults", {**sub._defaults, _CHOSEN: sub}) for sub in subs]
    with _temporarily(changes):
        return parser.parse_known_args(args)[0]


def _config_action(parser: argparse.ArgumentParser) -> argparse.Action | None:
    return next((a for a in parser._actions if "--config" in a.option_strings), None)


def _defaults_changes(sub: argparse.ArgumentParser, values: dict[argparse.Action, object]) -> list[tuple[object, str, object]]:
    """File values become defaults (of every action sharing the dest), and satisfy `required`."""
    same = [(a, value) for action, value in values.items() for a in sub._actions if a.dest == action.dest]
    return [(a, "default", value) for a, value in same] + [(a, "required", False) for a, _ in same]


def _load(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError (names the line), bad UTF-8, a huge integer, deep nesting
        raise ConfigError(f"{path}: invalid TOML: {_clip(str(exc))}") from None


def _keys(sub: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every long option's key, in both the hyphen and the underscore spelling."""
    keys: dict[str, argparse.Action] = {}
    for action in sub._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)) or action is _config_action(sub):
            continue
        for flag in action.option_strings:
            negated = isinstance(action, argparse.BooleanOptionalAction) and flag.startswith("--no-")
            if flag.startswith("--") and len(flag) > 2 and not negated:
                keys[flag[2:]] = action
                keys.setdefault(flag[2:].replace("-", "_"), action)
    return keys


def _file_values(path: str, sub: argparse.ArgumentParser, first: argparse.Namespace) -> dict[argparse.Action, object]:
    """The file's values by action, converted; append options given on the command line are left out."""
    keys, values = _keys(sub), {}
    for key, value in _load(path).items():
        action = keys.get(key)
        if action is None:
            raise ConfigError(f"{path}: {_unknown(key, value, keys, sub.prog)}")
        if action in values:
            raise ConfigError(f'{path}: key {_quote(key)}: {action.option_strings[-1]} is already set by another key')
        values[action] = _convert(f"{path}: key {_quote(key)}", action, value)
    given = lambda a: isinstance(a, argparse._AppendAction) and getattr(first, a.dest, None) is not a.default  # noqa: E731
    return {action: value for action, value in values.items() if not given(action)}


def _unknown(key: str, value: object, keys: dict[str, argparse.Action], prog: str) -> str:
    flags = sorted({flag[2:] for action in keys.values() for flag in action.option_strings if flag.startswith("--")})
    close = difflib.get_close_matches(key[:100], flags, n=1)
    hint = f" (did you mean {_quote(close[0])}?)" if close else ""
    flat = "; the file is flat: put options at the top level, not in [tables]" if isinstance(value, dict) else ""
    return f"unknown key {_quote(key)} for {prog}{hint}{flat}"


def _convert(where: str, action: argparse.Action, value: object) -> object:
    """The default to install for one key: flags take booleans, append takes arrays,
    extend a string or an array."""
    if isinstance(action, argparse._ExtendAction) and action.nargs is None:
        return _extended(where, action, value)
    if isinstance(action, _FLAGS):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {_describe(value)}")
        if not isinstance(action, argparse.BooleanOptionalAction) and not isinstance(action.const, bool):
            return action.const if value else action.default  # store_const
        return value if action.const is not False else not value  # store_false: true means "flag given"
    appends = isinstance(action, argparse._AppendAction) and (action.nargs is None or isinstance(action, argparse._ExtendAction))
    if appends or (type(action) is argparse._StoreAction and action.nargs not in (None, "?")):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: must be an array, got {_describe(value)}")
        return [_scalar(f"{where}, item {i + 1}", action, item, raw=False) for i, item in enumerate(value)]
    if type(action) is not argparse._StoreAction:
        raise ConfigError(f"{where}: {action.option_strings[-1]} cannot be set from a config file")
    return _scalar(where, action, value, raw=True)


def _extended(where: str, action: argparse.Action, value: object) -> list[object]:
    """An extend option's items as the command line gives them: a string is the option
    given once, an array's items each once; each is converted and its items added."""
    items = value if isinstance(value, list) else [value]
    found: list[object] = []
    for index, item in enumerate(items):
        converted = _scalar(f"{where}, item {index + 1}" if isinstance(value, list) else where, action, item, raw=False)
        found.extend(converted if isinstance(converted, (list, tuple)) else [converted])
    return found


def _scalar(where: str, action: argparse.Action, value: object, raw: bool) -> object:
    """Convert one value with the option's type, as if typed on the command line. With `raw`, a str
    result is returned as the text: argparse runs `type` on str defaults, so it is converted once."""
    if isinstance(value, dict):
        raise ConfigError(f"{where}: expected a value, got a table (the file is flat)")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: must be {_expected(action)}, got {_describe(value)}")
    try:
        text = value if isinstance(value, str) else str(value)
    except ValueError:  # an integer over Python's str-conversion digit limit
        raise ConfigError(f"{where}: integer too large ({_describe(value)})") from None
    convert = action.type if callable(action.type) else str
    try:
        result = convert(text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{where}: {_clip(str(exc))}") from None
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: must be {_expected(action)}, got {_describe(value)}") from None
    if action.choices is not None and result not in action.choices:
        choices = ", ".join(_quote(str(choice)) for choice in itertools.islice(action.choices, 20))
        raise ConfigError(f"{where}: must be one of {choices}, got {_describe(value)}")
    return text if raw and isinstance(result, str) else result


def _expected(action: argparse.Action) -> str:
    return next((noun for kind, noun in _EXPECTED if action.type is kind), "a valid value")


def _describe(value: object) -> str:
    """A short description of a TOML value; never reprs an unbounded integer or string."""
    if isinstance(value, bool):
        return f"a boolean {str(value).lower()}"
    if isinstance(value, int):
        digits = int(value.bit_length() * 0.30103) + 1
        return f"an integer {value}" if value.bit_length() <= 64 else f"an integer with about {digits} digits"
    if isinstance(value, (float, str)):
        return f"a float {value}" if isinstance(value, float) else f"a string {_quote(value)}"
    return {list: "an array", dict: "a table"}.get(type(value), f"a {type(value).__name__}")


def _quote(text: str) -> str:
    return json.dumps(_clip(text, 60), ensure_ascii=False)


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
