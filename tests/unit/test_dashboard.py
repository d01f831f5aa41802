"""The Grafana dashboard only queries metrics lmgate exposes."""

import json
import re
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from lmgate.server.app import create_app
from lmgate.server.settings import validate_settings

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "lmgate.json"


def test_every_metric_the_dashboard_queries_is_exposed():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    queried = {name for p in panels for t in p["targets"] for name in re.findall(r"lmgate_\w+", t["expr"])}
    settings = validate_settings({"server": {"grpc_port": 0}, "models": [{"name": "echo", "backend": "fake"}]})
    with TestClient(create_app(settings)) as client:
        client.post("/v1/completions", json={"model": "echo", "prompt": "a b c"})
        text = client.get("/metrics").text
    exposed = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    assert len(queried) >= 10
    assert queried - exposed == set()
