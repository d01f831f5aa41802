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


def test_gateway_and_worker_series_are_never_added_together():
    """Behind a gateway each request is counted twice (the gateway's series and the worker's): every
    query keeps to one component (the ServiceMonitor's ``component`` label), or to a lone lmgate without it."""
    dashboard = json.loads(DASHBOARD.read_text())
    constants = {v["name"]: v["query"] for v in dashboard["templating"]["list"] if v["type"] == "constant"}
    assert constants == {"front": "gateway|", "engines": "worker|"}

    def exprs(panels):
        for p in panels:
            yield from (t["expr"] for t in p.get("targets", []))
            yield from exprs(p.get("panels", []))

    selectors = [m for e in exprs(dashboard["panels"]) for m in re.findall(r"lmgate_\w+\{[^}]*\}", e)]
    assert len(selectors) >= 20
    assert all('component=~"$front"' in s or 'component=~"$engines"' in s for s in selectors)
    assert all('component=~"$engines"' in s for s in selectors if "kv_cache" in s or "prefix_cache" in s)
