"""``cfconv serve`` options: each one sets its ServerSettings field, with that field's
default and description."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from serving.cli import add_serve_arguments, settings_from
from serving.settings import DEFAULTS, ServerSettings


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    return serve_parser().parse_args(argv)


def test_defaults_are_the_settings_defaults(tmp_path):
    settings = settings_from(parse(["--model-repo", str(tmp_path)]))
    assert settings == dataclasses.replace(DEFAULTS, model_repo=tmp_path)


def test_every_option_reaches_its_setting(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    argv = ["--model-repo", str(tmp_path), "--backend", "tf", "--device", "cpu"]
    argv += ["--provider", "A", "--provider", "B", "--threads", "3", "--max-batch-size", "4"]
    argv += ["--max-delay-ms", "1.5", "--max-queue-images", "9", "--max-body-mb", "0.5"]
    argv += ["--max-image-pixels", "100", "--max-request-pixels", "200", "--poll-seconds", "7"]
    argv += ["--header-timeout", "1", "--body-timeout", "2", "--keep-alive", "3"]
    argv += ["--write-timeout", "4"]
    argv += ["--max-connections", "5", "--allowed-host", "a.example", "--cors-origin", "o"]
    argv += ["--auth-token-file", str(token)]
    settings = settings_from(parse(argv))
    expected = ServerSettings(
        model_repo=Path(tmp_path),
        backend="tf",
        device="cpu",
        providers=("A", "B"),
        threads=3,
        max_batch_size=4,
        max_delay_ms=1.5,
        max_queue_images=9,
        max_body_bytes=2**19,
        max_image_pixels=100,
        max_request_pixels=200,
        poll_seconds=7.0,
        header_timeout_s=1.0,
        body_timeout_s=2.0,
        write_timeout_s=4.0,
        keep_alive_s=3.0,
        max_connections=5,
        allowed_hosts=("a.example",),
        cors_origins=("o",),
        auth_token="s3cret",
    )
    assert settings == expected


def test_every_setting_but_work_threads_is_an_option_with_its_description():
    parser = serve_parser()
    helps = {action.dest: action.help for action in parser._actions}
    fields = {field.name: field for field in dataclasses.fields(ServerSettings)}
    # these settings take another form on the command line
    renamed = {
        "max_body_bytes": "max_body_mb",
        "max_body_memory_bytes": "max_body_memory_mb",
        "auth_token": "auth_token_file",
    }
    expected = {renamed.get(name, name) for name in fields} - {"work_threads"}
    assert expected <= set(helps)
    for name, field in fields.items():
        if name in helps and "help" in field.metadata:
            assert helps[name] == field.metadata["help"], name
    for setting, option in (
        ("max_body_bytes", "max_body_mb"),
        ("max_body_memory_bytes", "max_body_memory_mb"),
    ):
        assert fields[setting].metadata["help"] in helps[option]
    assert "--max-connections" in parser.format_help()  # argparse %-formats every help


@pytest.mark.parametrize("option", ["--max-batch-size", "--threads", "--keep-alive"])
def test_non_positive_values_are_refused(tmp_path, option, capsys):
    with pytest.raises(SystemExit):
        parse(["--model-repo", str(tmp_path), option, "0"])
    assert "expected a positive" in capsys.readouterr().err
