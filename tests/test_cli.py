"""The command line is derived from the typed configs: every field an option, with its description
and default, and the values given become the config the flow receives."""

from __future__ import annotations

import argparse

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
