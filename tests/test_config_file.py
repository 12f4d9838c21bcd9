"""`--config FILE` for subcommands (tools/config.py): file values, precedence and clean errors."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from tools.config import ConfigError, add_config_option, parse_args_with_config


def host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text}")
    return text


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """A small copy of the real CLI's shape; reads TEST_TOKEN from the environment when built."""
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    node = commands.add_parser("node")
    node.add_argument("--listen", type=host_port, required=True)
    node.add_argument("--replicas", type=int, default=3)
    node.add_argument("--stabilize-interval", type=positive, default=1.0)
    node.add_argument("--json", action="store_true")
    node.add_argument("--peer", action="append", type=host_port)
    node.add_argument("--mode", choices=["fast", "safe"], default="safe")
    node.add_argument("--token", default=os.environ.get("TEST_TOKEN") or None)
    node.add_argument("--label", type=lambda text: f"<{text}>")  # not idempotent: must run once
    add_config_option(node)
    plain = commands.add_parser("plain")
    plain.add_argument("--via", required=True)
    return parser


@pytest.fixture
def config(tmp_path: Path):
    """Write a config file and return its path."""

    def write(text: str) -> str:
        path = tmp_path / "config.toml"
        path.write_text(text)
        return str(path)

    return write


def parse(path: str, *argv: str) -> argparse.Namespace:
    return parse_args_with_config(build_parser(), ["node", "--config", path, *argv])


def error(path: str, *argv: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(path, *argv)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and len(message) < 500
    return message[len(path) + 2 :]


FULL = """
listen = "127.0.0.1:0"
replicas = 5
stabilize-interval = 0.5
json = true
peer = ["a:1", "b:2"]
mode = "fast"
token = "from-file"
label = "x"
"""


def test_every_value_can_come_from_the_file(config) -> None:
    args = parse(config(FULL))
    assert (args.listen, args.replicas, args.stabilize_interval, args.json) == ("127.0.0.1:0", 5, 0.5, True)
    assert (args.peer, args.mode, args.token, args.label) == (["a:1", "b:2"], "fast", "from-file", "<x>")
    assert args.command == "node" and args.config.endswith("config.toml")


def test_numbers_are_accepted_through_their_string_form(config) -> None:
    args = parse(config('listen = "h:1"\nstabilize-interval = 2\ntoken = 42'))
    assert (args.stabilize_interval, args.token) == (2.0, "42")


def test_command_line_overrides_the_file(config) -> None:
    path = config(FULL)
    args = parse(path, "--listen", "h:9", "--replicas", "7", "--peer", "c:3", "--mode", "safe")
    assert (args.listen, args.replicas, args.peer, args.mode) == ("h:9", 7, ["c:3"], "safe")
    assert args.json is True and args.label == "<x>"  # what the command line left alone still comes from the file


@pytest.mark.parametrize("spelling", [["--config=PATH"], ["--config", "PATH"]])
def test_config_spellings_and_top_level_options(config, spelling: list[str]) -> None:
    path = config('listen = "h:1"')
    argv = ["--log-level", "WARNING", "node", *(arg.replace("PATH", path) for arg in spelling)]
    args = parse_args_with_config(build_parser(), argv)
    assert (args.log_level, args.listen) == ("WARNING", "h:1")


def test_file_overrides_environment_default_and_command_line_overrides_both(config, monkeypatch) -> None:
    monkeypatch.setenv("TEST_TOKEN", "from-env")
    assert parse(config('listen = "h:1"')).token == "from-env"
    assert parse(config('listen = "h:1"\ntoken = "from-file"')).token == "from-file"
    assert parse(config('listen = "h:1"\ntoken = "from-file"'), "--token", "cli").token == "cli"


def test_underscore_spelling(config) -> None:
    assert parse(config('listen = "h:1"\nstabilize_interval = 2.5')).stabilize_interval == 2.5
    message = error(config('listen = "h:1"\nstabilize_interval = 2.5\nstabilize-interval = 3'))
    assert "already set" in message


def test_unknown_key_suggests_the_closest(config) -> None:
    assert error(config('listn = "h:1"')) == 'unknown key "listn" for tool node (did you mean "listen"?)'
    assert error(config("zzzzzz = 1")) == 'unknown key "zzzzzz" for tool node'
    assert error(config('config = "other.toml"')).startswith('unknown key "config"')  # no nesting of files
    assert error(config("help = true")).startswith('unknown key "help"')
    assert "the file is flat" in error(config("[node]\nlisten = 'h:1'"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('replicas = "three"', 'key "replicas": must be an integer, got a string "three"'),
        ("replicas = true", 'key "replicas": must be an integer, got a boolean true'),
        ("replicas = 3.5", 'key "replicas": must be an integer, got a float 3.5'),
        ("json = 1", 'key "json": must be true or false, got an integer 1'),
        ('json = "yes"', 'key "json": must be true or false, got a string "yes"'),
        ('listen = ["a:1"]', 'key "listen": must be a valid value, got an array'),
        ('peer = "a:1"', 'key "peer": must be an array, got a string "a:1"'),
        ('peer = ["a:1", 7]', 'key "peer", item 2: expected HOST:PORT, got 7'),
        ("[listen]\nhost = 'a'", 'key "listen": expected a value, got a table (the file is flat)'),
        ('mode = "turbo"', 'key "mode": must be one of "fast", "safe", got a string "turbo"'),
        ("stabilize-interval = 1979-05-27", 'key "stabilize-interval": must be a valid value, got a date'),
    ],
)
def test_wrong_types(config, text: str, expected: str) -> None:
    assert error(config(text)) == expected


def test_the_type_callables_own_message_names_the_key(config) -> None:
    assert error(config('listen = "nonsense"')) == 'key "listen": expected HOST:PORT, got nonsense'
    assert error(config('listen = "h:1"\nstabilize-interval = -1')) == 'key "stabilize-interval": must be positive, got -1'
    assert error(config('listen = "h:1"\nstabilize-interval = "soon"')) == (
        'key "stabilize-interval": must be a valid value, got a string "soon"'
    )


def test_long_strings_are_clipped_in_messages(config) -> None:
    assert len(error(config(f'replicas = "{"9x" * 100_000}"'))) < 200


def test_toml_syntax_error_names_the_line(config) -> None:
    message = error(config('listen = "h:1"\nreplicas = = 3\n'))
    assert message.startswith("invalid TOML:") and "line 2" in message


def test_not_utf8_and_deep_nesting_are_clean_errors(tmp_path: Path, config) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'token = "caf\xe9"\n')
    assert error(str(path)).startswith("invalid TOML:")
    assert error(config("peer = " + "[" * 50_000 + "]" * 50_000)).startswith("invalid TOML:")


def test_missing_or_unreadable_file(tmp_path: Path) -> None:
    assert error(str(tmp_path / "absent.toml")) == "cannot read config file: No such file or directory"
    assert error(str(tmp_path)).startswith("cannot read config file:")


def test_huge_integers_are_clean_errors(config) -> None:
    hex_digits = "f" * 5000  # hex is exempt from Python's 4300-digit limit, so tomllib returns the int
    assert error(config(f'listen = "h:1"\nreplicas = 0x{hex_digits}')) == (
        'key "replicas": integer too large (an integer with about 6021 digits)'
    )
    assert "integer too large" in error(config(f'listen = "h:1"\ntoken = 0x{hex_digits}'))
    assert "must be true or false, got an integer with about" in error(config(f"json = 0x{hex_digits}"))
    assert error(config("replicas = " + "1" * 5000)).startswith("invalid TOML:")  # decimal: tomllib refuses it


def test_required_option_is_satisfied_by_the_file(config) -> None:
    assert parse(config('listen = "h:1"')).listen == "h:1"


def test_required_option_missing_everywhere_is_argparses_usual_error(config, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        parse(config("replicas = 4"))
    assert caught.value.code == 2
    assert "the following arguments are required: --listen" in capsys.readouterr().err


def test_command_line_errors_stay_argparse_errors(config, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        parse(config('listen = "h:1"'), "--replicas", "many")
    assert caught.value.code == 2 and "argument --replicas: invalid int value" in capsys.readouterr().err


def test_parsers_are_left_unchanged(config) -> None:
    parser = build_parser()
    parse_args_with_config(parser, ["node", "--config", config('listen = "h:1"\nreplicas = 9\npeer = ["a:1"]')])
    args = parse_args_with_config(parser, ["node", "--listen", "h:2"])
    assert (args.replicas, args.peer, args.config) == (3, None, None)
    with pytest.raises(SystemExit):
        parse_args_with_config(parser, ["node"])


def test_commands_without_config_are_untouched() -> None:
    argv = ["--log-level", "DEBUG", "plain", "--via", "v:1"]
    assert parse_args_with_config(build_parser(), argv) == build_parser().parse_args(argv)
    argv = ["node", "--listen", "h:1", "--label", "y"]
    assert parse_args_with_config(build_parser(), argv) == build_parser().parse_args(argv)
    with pytest.raises(SystemExit):
        parse_args_with_config(build_parser(), ["plain", "--config", "x.toml", "--via", "v:1"])


def test_the_real_cli_node_command(config) -> None:
    cli = pytest.importorskip("tools.cli")
    if not hasattr(cli, "build_parser"):
        pytest.skip("tools.cli has no build_parser")
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if not any("--config" in action.option_strings for action in commands.choices["node"]._actions):
        pytest.skip("the real `chordcdn node` parser has no --config option yet")
    args = parse_args_with_config(parser, ["node", "--config", config('listen = "127.0.0.1:0"')])
    assert (args.command, args.listen, args.replicas) == ("node", "127.0.0.1:0", 3)
