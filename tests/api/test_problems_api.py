"""The API knows what live workers can run: ``/v1/problems`` lists it, and a submission naming a problem or model
none of them runs is a 422 naming the field, the value and what they do run."""

from __future__ import annotations

from flatmtl.service import capabilities
from flatmtl.service.capabilities import Capabilities
from tests.api.conftest import Api

SINES = {"name": "sines", "source": "plugin example (example.problem:Sines)", "options": ["seed"], "models": ["mlp"]}
MLP = {"name": "mlp", "source": "built-in", "options": ["hidden"]}


def test_submissions_name_what_live_workers_run(api: Api) -> None:
    alice = api.as_user("alice")
    spec = {"problem": "toy", "model": "mlp"}
    assert api.client.post("/v1/jobs", json={"spec": spec}, headers=alice).status_code == 201  # no worker yet
    capabilities.advertise(api.db, "host:1", Capabilities(cpus=4, gpus=0, problems=[SINES], models=[MLP]))
    refused = api.client.post("/v1/jobs", json={"spec": spec}, headers=alice)
    assert refused.status_code == 422
    assert refused.json()["errors"] == [
        {
            "field": "spec.problem",
            "value": "toy",
            "message": "spec.problem: no live worker can run 'toy'; they run: sines",
            "allowed": "sines",
        }
    ]
    wrong_model = api.client.post("/v1/jobs", json={"spec": {"problem": "sines", "model": "ple"}}, headers=alice)
    assert wrong_model.status_code == 422 and wrong_model.json()["errors"][0]["field"] == "spec.model"
    assert api.client.post("/v1/jobs", json={"spec": {"problem": "sines"}}, headers=alice).status_code == 201
    listed = api.client.get("/v1/problems", headers=api.as_user("reader")).json()
    assert listed["problems"] == [{**SINES, "error": None, "workers": ["host:1"]}]
    assert listed["models"] == [{**MLP, "models": [], "error": None, "workers": ["host:1"]}]
