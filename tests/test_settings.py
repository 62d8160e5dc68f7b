"""Settings honour the variables each ecosystem's users already set; an OLDPHOTO_* variable or a flag wins."""

from __future__ import annotations

import dask
import pytest

from oldphoto.settings import Settings

CONVENTIONS = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "OLDPHOTO_MLFLOW_TRACKING_URI",
               "OLDPHOTO_S3_ENDPOINT_URL", "OLDPHOTO_DASK_ADDRESS")


@pytest.fixture
def clean_environment(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .env of the project's
    for name in CONVENTIONS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_mlflow_tracking_uri_is_honoured_and_oldphoto_or_a_flag_wins(clean_environment):
    assert Settings().tracking_uri.startswith("sqlite:///")
    clean_environment.setenv("MLFLOW_TRACKING_URI", "http://mlflow.team:5000")
    assert Settings().tracking_uri == "http://mlflow.team:5000"
    clean_environment.setenv("OLDPHOTO_MLFLOW_TRACKING_URI", "sqlite:///own.db")
    assert Settings().tracking_uri == "sqlite:///own.db"
    assert Settings(mlflow_tracking_uri="http://flag:5000").tracking_uri == "http://flag:5000"


def test_aws_endpoint_variables_are_honoured_s3_specific_first(clean_environment):
    assert Settings().s3_endpoint_url is None
    clean_environment.setenv("AWS_ENDPOINT_URL", "http://all-services:9000")
    assert Settings().s3_endpoint_url == "http://all-services:9000"
    clean_environment.setenv("AWS_ENDPOINT_URL_S3", "http://minio:9000")
    assert Settings().s3_endpoint_url == "http://minio:9000"
    assert Settings().fsspec_options("s3://bucket/key")["client_kwargs"]["endpoint_url"] == "http://minio:9000"
    clean_environment.setenv("OLDPHOTO_S3_ENDPOINT_URL", "http://own:9000")
    assert Settings().s3_endpoint_url == "http://own:9000"


def test_dasks_scheduler_address_is_honoured(clean_environment):
    # DASK_SCHEDULER_ADDRESS is how dask's users set its `scheduler-address`:
    from_environment = dask.config.collect_env({"DASK_SCHEDULER_ADDRESS": "tcp://sched:8786"})
    assert dask.config.get("scheduler-address", config=from_environment) == "tcp://sched:8786"
    assert Settings().dask_address is None
    with dask.config.set({"scheduler-address": "tcp://sched:8786"}):
        assert Settings().dask_address == "tcp://sched:8786"
        clean_environment.setenv("OLDPHOTO_DASK_ADDRESS", "tcp://own:8786")
        assert Settings().dask_address == "tcp://own:8786"
