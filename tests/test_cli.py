"""The command line is derived from the typed configs: every field an option, with its description
and default, and the values given become the config the flow receives."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap

import pytest
from pydantic import Field

from oldphoto.cli import build_parser, main
from oldphoto.options import add_options, option_values
from oldphoto.tasks.evaluate import EvaluateConfig
from oldphoto.tasks.restore import RestoreConfig
from oldphoto.tasks.synth import SynthConfig


def _help(command: str) -> str:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command].format_help()


@pytest.mark.parametrize("command, config", [("restore", RestoreConfig), ("evaluate", EvaluateConfig), ("synth", SynthConfig)])
def test_every_field_of_a_commands_config_is_an_option(command, config):
    text = " ".join(_help(command).split())
    for name, field in config.model_fields.items():
        assert f"--{name.replace('_', '-')}" in text, name
        if field.description:
            assert " ".join(field.description.split()) in text, name


def test_a_field_added_to_a_config_appears_with_its_description_and_default():
    class Extended(RestoreConfig):
        retries: int = Field(3, description="how often a failed image is tried again")

    parser = argparse.ArgumentParser()
    add_options(parser, Extended, "restoration")
    assert "how often a failed image is tried again (default: 3)" in " ".join(parser.format_help().split())
    args = parser.parse_args(["--retries", "5", "--force", "--scratch", "off"])
    assert Extended(**option_values(args, Extended)) == Extended(retries=5, force=True, scratch="off")
    assert Extended(**option_values(parser.parse_args([]), Extended)) == Extended(), "unset options keep the defaults"
    with pytest.raises(SystemExit):
        parser.parse_args(["--scratch", "sometimes"])  # choices come from the Literal


def test_values_given_become_the_config():
    args = build_parser().parse_args(["restore", "in", "out", "--tile", "256", "--no-force", "--colour", "restore"])
    assert RestoreConfig(**option_values(args, RestoreConfig)) == RestoreConfig(tile=256, colour="restore")
    args = build_parser().parse_args(["evaluate", "--crop", "0", "--degradation", "v2", "--count", "3"])
    config = EvaluateConfig(**option_values(args, EvaluateConfig))
    assert config.crop is None and config.count == 3 and config.degradation.stages[0].name == "v2"


def test_a_bad_value_is_refused_with_the_field_and_the_reason(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["synth", "a", "b", "--degradation", "nope"])
    assert "--degradation: degradation config 'nope': neither a preset" in capsys.readouterr().err
    assert main(["synth", str(tmp_path), str(tmp_path / "out"), "--crop", "8"]) == 2
    assert "crop: Input should be greater than or equal to 16" in capsys.readouterr().err


def test_quieting_the_console_leaves_the_environment_as_it_was(tmp_path):
    import os

    before = {k: os.environ.get(k) for k in ("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "DASK_LOGGING__DISTRIBUTED")}
    assert main(["synth", str(tmp_path / "nope"), str(tmp_path / "out"), "--count", "1"]) == 2
    assert {k: os.environ.get(k) for k in before} == before, "nothing leaks into what runs after (a stack, a scheduler)"


def test_the_quiet_console_still_says_when_a_task_is_retried(tmp_path, prefect_api):
    """A stage that fails and starts again from its checkpoint must not do so silently: Prefect
    announces the retry at INFO, which the quiet console would hide."""
    script = tmp_path / "flaky.py"
    script.write_text(textwrap.dedent("""
        from oldphoto.cli import quiet_console

        with quiet_console(["train"]):
            from prefect import flow, task

            calls = []

            @task(retries=1, retry_delay_seconds=0)
            def flaky():
                calls.append(1)
                if len(calls) == 1:
                    raise OSError("the archive's server hung up")
                return len(calls)

            @flow
            def run():
                return flaky()

            print(run())
    """))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"} | {"PREFECT_API_URL": prefect_api}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr[-2000:]
    assert "WARNING" in done.stderr and "Retry 1/1 will start" in done.stderr and "the archive's server hung up" in done.stderr
    assert "| INFO" not in done.stderr, "the other task-run lines stay off the console"
