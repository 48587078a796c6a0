"""The YAML config file: every flag of ``analyze`` and ``flows`` can be set in its ``commands``
section, flags on the command line win, and every mistake is one line naming file:line."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flowsense.cli import build_parser, parse_args
from flowsense.config import _NOT_IN_COMMANDS, load_config
from flowsense.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
PCAPS = REPO / "pcaps" / "corpus"


def _value(action: argparse.Action) -> object:
    """A valid value for a flag, other than its default."""
    if isinstance(action, argparse._AppendAction):
        return ["x.yaml"]
    if isinstance(action, argparse._CountAction) or action.type is int:
        return 3
    if action.type not in (None, str, float):  # a converter of its own (--jobs): what it takes
        return action.type("3")
    if action.nargs == 0:
        return True
    if action.type is float:
        return 7.5
    if action.choices is not None:
        return next(c for c in action.choices if c != action.default)
    return "some-file"


def _settable(command: str) -> list[argparse.Action]:
    sub = build_parser().commands[command]
    return [a for a in sub._actions if a.option_strings and a.dest not in _NOT_IN_COMMANDS]


@pytest.mark.parametrize("command", ["analyze", "flows"])
def test_every_flag_can_be_set_and_the_command_line_wins(command: str, tmp_path: Path) -> None:
    actions = _settable(command)
    dests = {a.dest for a in actions}
    assert {"output", "format", "quiet", "verbose"} <= dests
    if command == "analyze":
        assert {"report", "signatures"} <= dests
    values = {a.dest: _value(a) for a in actions}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"commands": {command: values}}))
    args = parse_args(build_parser(), [command, "x.pcap", "--config", str(path)])
    for dest, value in values.items():
        assert getattr(args, dest) == value, dest
    # a flag given on the command line wins over the file
    for a in actions:
        if a.nargs == 0 or isinstance(a, argparse._CountAction):
            continue  # switches can only be turned on
        if isinstance(a, argparse._AppendAction):
            argv, want = [a.option_strings[-1], "cli.yaml"], ["cli.yaml"]
        elif a.choices is not None:
            want = a.default
            argv = [a.option_strings[-1], str(want)]
        else:
            want = 11 if a.type not in (None, str) else "cli-file"
            argv = [a.option_strings[-1], str(want)]
        args = parse_args(build_parser(), [command, "x.pcap", "--config", str(path), *argv])
        assert getattr(args, a.dest) == want, a.dest


def test_without_a_file_defaults_are_the_parser_s() -> None:
    args = parse_args(build_parser(), ["analyze", "x.pcap"])
    assert args.format == "summary" and args.report is None and args.signatures is None


@pytest.mark.parametrize(("text", "where"), [
    ("bogus: 1\n", "c.yaml:1: bogus: unknown key 'bogus'"),
    ("flows:\n  idle_timeout_s: 60\n  idle_timeout: 5\n",
     "c.yaml:3: flows.idle_timeout: unknown key"),
    ("capture:\n  batch_packets: many\n", "c.yaml:2: capture.batch_packets: expected int"),
    ("commands:\n  watch: {}\n", "c.yaml:2: commands.watch: unknown command"),
    ("commands:\n  analyze:\n    format: eve\n    jobz: 2\n",
     "c.yaml:4: commands.analyze.jobz: unknown key 'jobz'"),
    ("commands:\n  analyze:\n    format: html\n",
     "c.yaml:3: commands.analyze.format: expected one of summary, eve"),
    ("commands:\n  flows:\n    splt: yes please\n",
     "c.yaml:3: commands.flows.splt: expected true or false"),
    ("commands:\n  analyze:\n    home_net: 10.0.0.0/8\n",
     "c.yaml:3: commands.analyze.home_net: set home_net at the top level"),
    ("commands:\n  analyze:\n    signatures: [1, 2]\n",
     "c.yaml:3: commands.analyze.signatures: expected a list of strings"),
    ("commands:\n  analyze: [eve]\n", "c.yaml:2: commands.analyze: expected a mapping"),
    ("flows:\n  idle_timeout_s: [\n", "c.yaml:3: invalid YAML"),
])
def test_mistakes_name_file_and_line(text: str, where: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    flags = {k: list(v._actions) for k, v in build_parser().commands.items()}
    with pytest.raises(ConfigError) as exc:
        load_config(str(path), flags)
    assert str(exc.value).startswith(str(tmp_path / where[: where.index(":")])), exc.value
    assert where in str(exc.value), exc.value
    assert "\n" not in str(exc.value)


def test_config_drives_the_cli(tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"home_net: [192.168.0.0/16]\n"
                   f"flows:\n  idle_timeout_s: 60\n"
                   f"commands:\n  analyze:\n    format: eve\n    report: {page}\n    quiet: true\n")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flowsense", *args], capture_output=True,
                              timeout=300, cwd=REPO)

    r = run("analyze", str(PCAPS), "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    alerts = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert len(alerts) == 4 and page.stat().st_size > 0
    # home_net from the file: 172.16.0.0/12 is no longer inside
    odd = next(a for a in alerts if a["alert"]["variant"] == "odd-port")
    assert odd["direction"] == "external"
    r = run("analyze", str(PCAPS), "--config", str(cfg), "--format", "summary")
    assert r.returncode == 0 and r.stdout.startswith(b"flowsense analyze:")
    cfg.write_text("commands:\n  analyze:\n    format: eve\n    repot: r.html\n")
    r = run("analyze", str(PCAPS), "--config", str(cfg))
    assert r.returncode == 2 and not r.stdout
    assert r.stderr.decode() == (f"flowsense: error: {cfg}:4: commands.analyze.repot: unknown "
                                 "key 'repot' (not a flag of analyze)\n")


def test_parallel_flags_are_settable(tmp_path: Path) -> None:
    """The parallel options (--jobs, --engine, --independent) need no config code of their own:
    the config file checks them with the flags' own converters and choices."""
    parser = build_parser()
    path = tmp_path / "c.yaml"
    path.write_text("commands:\n  analyze:\n    jobs: 2\n    engine: dask\n    independent: true\n")
    args = parse_args(parser, ["analyze", "x.pcap", "--config", str(path)])
    assert (args.jobs, args.engine, args.independent) == (2, "dask", True)
    args = parse_args(parser, ["analyze", "x.pcap", "--config", str(path), "--jobs", "3"])
    assert args.jobs == 3
    path.write_text("commands:\n  analyze:\n    engine: dask\n    jobs: 0\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:4: commands\.analyze\.jobs: invalid value: "
                                          "must be at least 1"):
        parse_args(parser, ["analyze", "x.pcap", "--config", str(path)])
