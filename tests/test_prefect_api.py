"""The Prefect API of a command: the configured one, or a temporary one started at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil
from prefect.settings.models.flows import FlowsSettings

PROBE = """
import json, httpx
from prefect.settings import get_current_settings
from oldphoto.prefect_api import PrefectAPI
with PrefectAPI() as api:
    started = api._server.pid if api._server else None
    url = api.ready()
    answer = httpx.get(url + "/health").json()
    heartbeat = get_current_settings().flows.heartbeat_frequency
with PrefectAPI() as unused:  # left before ready(): stopped unused
    never = unused._server.pid if unused._server else None
print(json.dumps([url, answer, started, never, heartbeat]))
"""


def probe(env: dict, script: str = PROBE) -> list:
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_temporary_api_answers_when_ready_and_goes_with_the_block(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_FLOWS_HEARTBEAT_FREQUENCY")}
    env |= {"PREFECT_HOME": str(tmp_path)}
    url, answer, started, never, heartbeat = probe(env)
    assert url.startswith("http://127.0.0.1:") and url.endswith("/api") and answer is True
    assert started and never and not psutil.pid_exists(started) and not psutil.pid_exists(never)
    assert heartbeat is None  # no flow run heartbeats for an API that goes with the process
    # unless the user asks for them
    assert probe(env | {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "45"})[4] == 45


def test_the_configured_api_is_used_and_nothing_is_started(tmp_path, prefect_api):
    url, answer, started, never, heartbeat = probe(os.environ | {"PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(tmp_path)})
    assert (url, answer, started, never) == (prefect_api, True, None, None)
    assert heartbeat == FlowsSettings.model_fields["heartbeat_frequency"].default  # Prefect's, for a lasting server


EARLY = """
import json, httpx, psutil
from oldphoto import prefect_api
prefect_api.start_early()
early = prefect_api._early[0].pid if prefect_api._early else None
with prefect_api.PrefectAPI() as api:
    taken = api._server.pid if api._server else None
    url = api.ready()
    answer = httpx.get(url + "/health").json()
print(json.dumps([early, taken, url, answer, psutil.pid_exists(early) if early else None]))
"""


def test_the_server_launched_before_prefect_is_imported_is_the_one_the_command_uses(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path)}
    started, taken, url, answer, _ = probe(env, EARLY)
    assert started and taken == started and url.startswith("http://127.0.0.1:") and answer is True
    assert not psutil.pid_exists(started)  # gone with the block


def test_an_api_named_by_the_profile_stops_the_early_server_unused(tmp_path, prefect_api):
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(f'active = "team"\n\n[profiles.team]\nPREFECT_API_URL = "{prefect_api}"\n')
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    started, taken, url, answer, alive = probe(env | {"PREFECT_HOME": str(tmp_path), "PREFECT_PROFILES_PATH": str(profiles)}, EARLY)
    assert started and taken is None and alive is False  # launched on the guess, stopped once Prefect said otherwise
    assert (url, answer) == (prefect_api, True)
    # With PREFECT_API_URL in the environment nothing is launched at all.
    assert probe(env | {"PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(tmp_path)}, EARLY)[:3] == [None, None, prefect_api]
