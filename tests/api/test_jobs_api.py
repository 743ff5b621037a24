"""The REST API on a migrated database (SQLite and PostgreSQL): happy paths of every job route."""

from __future__ import annotations

import os
from typing import Any

from flatmtl.service import artifacts, queue
from flatmtl.service.catalog import load_catalog
from tests.api.conftest import Api

TRAIN = {"problem": "multi_digits", "method": {"wrapper": {"name": "fmtl", "hparams": {"rho": 0.05, "alpha": 0.5}}}}
SWEEP = {
    "kind": "sweep",
    "name": "rho-alpha",
    "base": TRAIN,
    "space": {
        "method.wrapper.hparams.rho": {"type": "grid", "values": [0.01, 0.1]},
        "method.wrapper.hparams.alpha": {"type": "grid", "values": [0.2, 0.8]},
    },
    "metric": "delta_m",
    "mode": "min",
}


def submit(api: Api, spec: dict[str, Any] | None = None, user: str = "alice", **extra: Any) -> dict[str, Any]:
    response = api.client.post("/v1/jobs", json={"spec": spec or TRAIN, **extra}, headers=api.as_user(user))
    assert response.status_code == 201, response.text
    return response.json()


def test_submit_get_and_list_with_filters_and_pages(api: Api) -> None:
    created = [submit(api, {**TRAIN, "name": f"run-{i % 2}"}) for i in range(5)]
    sweep = submit(api, SWEEP)
    assert created[0]["state"] == "queued" and created[0]["created_by"] == "alice"
    assert created[0]["spec"]["optimizer"]["name"] == "adam", "the stored spec has its defaults filled in"
    assert sweep["kind"] == "sweep" and sweep["name"] == "rho-alpha"

    headers = api.as_user("auditor")
    got = api.client.get(f"/v1/jobs/{created[2]['id']}", headers=headers).json()
    assert got == created[2]

    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = api.client.get("/v1/jobs", params=params, headers=headers).json()
        seen += [job["id"] for job in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    all_ids = [job["id"] for job in [*created, sweep]]
    assert seen == sorted(all_ids, reverse=True)

    by_kind = api.client.get("/v1/jobs", params={"kind": "sweep"}, headers=headers).json()["items"]
    assert [job["id"] for job in by_kind] == [sweep["id"]]
    by_name = api.client.get("/v1/jobs", params={"name": "run-1"}, headers=headers).json()["items"]
    assert sorted(job["id"] for job in by_name) == [created[1]["id"], created[3]["id"]]
    queue.cancel(api.db, created[0]["id"])
    states = api.client.get("/v1/jobs", params={"state": ["cancelled", "running"]}, headers=headers).json()["items"]
    assert [job["id"] for job in states] == [created[0]["id"]]


def test_idempotency_key_over_rest(api: Api) -> None:
    first = submit(api, idempotency_key="nightly-42")
    again = api.client.post(
        "/v1/jobs", json={"spec": TRAIN, "idempotency_key": "nightly-42"}, headers=api.as_user("alice")
    )
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    clash = api.client.post(
        "/v1/jobs", json={"spec": {**TRAIN, "epochs": 3}, "idempotency_key": "nightly-42"}, headers=api.as_user("alice")
    )
    assert clash.status_code == 409 and "different spec" in clash.json()["message"]


def test_cancel_and_retry_over_rest(api: Api) -> None:
    headers = api.as_user("alice")
    job = submit(api)
    cancelled = api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    again = api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    assert again.status_code == 409 and "already cancelled" in again.json()["message"]
    retried = api.client.post(f"/v1/jobs/{job['id']}/retry", headers=headers)
    assert retried.status_code == 200 and retried.json()["state"] == "queued"

    lease = queue.claim(api.db, "worker", 30)
    assert lease is not None and lease.job_id == job["id"]
    queue.complete(api.db, lease, "succeeded", result={"delta_m": -1.5})
    finished = api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    assert finished.status_code == 409 and "already succeeded" in finished.json()["message"]
    assert api.client.post(f"/v1/jobs/{job['id']}/retry", headers=headers).status_code == 409
    events = api.client.get(f"/v1/jobs/{job['id']}/events", headers=headers).json()["items"]
    assert [e["kind"] for e in events] == ["submitted", "cancelled", "retried", "claimed", "succeeded"]


def test_metrics_and_trials_written_by_a_worker(api: Api) -> None:
    job = submit(api, SWEEP)
    lease = queue.claim(api.db, "worker", 30)
    assert lease is not None
    queue.record_metrics(api.db, lease, [(s, "loss", 1.0 / (s + 1)) for s in range(50)], trial_index=0)
    queue.record_metrics(api.db, lease, [(s, "delta_m", float(-s)) for s in range(3)], trial_index=1)
    queue.record_metrics(api.db, lease, [(0, "diverged", float("nan"))])
    configs = [{"rho": 0.01, "alpha": 0.2}, {"rho": 0.1, "alpha": 0.8}]
    for index, config in enumerate(configs):
        queue.record_trial(api.db, lease, index, config=config, state="succeeded", best_metric=-index - 0.5)

    headers = api.as_user("auditor")
    url = f"/v1/jobs/{job['id']}/metrics"
    history = api.client.get(url, headers=headers).json()["series"]
    assert {(s["name"], s["trial_index"]) for s in history} == {("loss", 0), ("delta_m", 1), ("diverged", None)}
    loss = next(s for s in history if s["name"] == "loss")
    assert loss["steps"] == list(range(50)) and loss["values"][3] == 0.25
    assert next(s for s in history if s["name"] == "diverged")["values"] == [None]
    sampled = api.client.get(url, params={"name": "loss", "max_points": 8}, headers=headers).json()["series"]
    assert len(sampled) == 1 and len(sampled[0]["steps"]) == 8 and sampled[0]["steps"][::7] == [0, 49]
    only_trial = api.client.get(url, params={"trial": 1}, headers=headers).json()["series"]
    assert [s["name"] for s in only_trial] == ["delta_m"]

    trials = api.client.get(f"/v1/jobs/{job['id']}/trials", headers=headers).json()["items"]
    assert [(t["trial_index"], t["config"], t["best_metric"]) for t in trials] == [
        (0, configs[0], -0.5),
        (1, configs[1], -1.5),
    ]


def test_log_tail_and_follow(api: Api) -> None:
    job = submit(api)
    path = artifacts.log_path(api.settings.artifacts, job["id"])
    path.parent.mkdir(parents=True)
    path.write_text("".join(f"line {i}\n" for i in range(1000)))
    url = f"/v1/jobs/{job['id']}/logs"
    headers = api.as_user("auditor")
    tail = api.client.get(url, params={"tail": 3}, headers=headers).json()
    assert tail["lines"] == ["line 997", "line 998", "line 999"] and tail["next_offset"] == path.stat().st_size
    with path.open("a") as handle:
        handle.write("line 1000\npartial")
    follow = api.client.get(url, params={"offset": tail["next_offset"]}, headers=headers).json()
    assert follow["lines"] == ["line 1000"] and follow["next_offset"] == path.stat().st_size - len("partial")


def test_artifacts_list_download_and_no_traversal(api: Api) -> None:
    job = submit(api)
    root = artifacts.job_dir(api.settings.artifacts, job["id"])
    (root / "plots").mkdir(parents=True)
    (root / "report.json").write_text('{"delta_m": -1.0}')
    (root / "plots" / "loss.png").write_bytes(b"\x89PNG")
    secret = api.settings.data_dir / "token_secret"
    os.symlink(secret, root / "escape")
    headers = api.as_user("auditor")
    listed = api.client.get(f"/v1/jobs/{job['id']}/artifacts", headers=headers).json()["items"]
    assert [(a["path"], a["size"]) for a in listed] == [("plots/loss.png", 4), ("report.json", 17)]
    download = api.client.get(f"/v1/jobs/{job['id']}/artifacts/plots/loss.png", headers=headers)
    assert download.status_code == 200 and download.content == b"\x89PNG"
    for bad in (
        "escape",
        "..%2F..%2F..%2Ftoken_secret",
        "%2E%2E/%2E%2E/%2E%2E/token_secret",
        "%2Fetc%2Fpasswd",
        "plots",
    ):
        response = api.client.get(f"/v1/jobs/{job['id']}/artifacts/{bad}", headers=headers)
        assert response.status_code == 404, (bad, response.status_code)
        assert "test-secret" not in response.text


def test_unknown_job_is_404_everywhere(api: Api) -> None:
    headers = api.as_user("root")
    for method, path in [
        ("GET", "/v1/jobs/424242"),
        ("POST", "/v1/jobs/424242/cancel"),
        ("POST", "/v1/jobs/424242/retry"),
        ("GET", "/v1/jobs/424242/metrics"),
        ("GET", "/v1/jobs/424242/trials"),
        ("GET", "/v1/jobs/424242/events"),
        ("GET", "/v1/jobs/424242/logs"),
        ("GET", "/v1/jobs/424242/artifacts"),
        ("GET", "/v1/jobs/424242/artifacts/report.json"),
    ]:
        response = api.client.request(method, path, headers=headers)
        assert response.status_code == 404, path
        assert response.json() == {"code": "not_found", "message": "job 424242 does not exist", "errors": []}


def test_methods_health_and_readiness(api: Api) -> None:
    listed = api.client.get("/v1/methods", headers=api.as_user("reader")).json()["methods"]
    assert listed == [m.raw for m in load_catalog().methods()]
    wrappers = api.client.get("/v1/methods", params={"kind": "wrapper"}, headers=api.as_user("reader")).json()
    assert {m["kind"] for m in wrappers["methods"]} == {"wrapper"}
    assert api.client.get("/healthz").json() == {"status": "ok"}
    assert api.client.get("/readyz").json() == {"status": "ok"}


def test_prometheus_metrics_show_running_jobs_and_request_latency(api: Api) -> None:
    job = submit(api)
    lease = queue.claim(api.db, "worker", 30)
    assert lease is not None and lease.job_id == job["id"]
    api.client.get(f"/v1/jobs/{job['id']}", headers=api.as_user("auditor"))
    response = api.client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'route="/v1/jobs/{job_id}"' in text and f'route="/v1/jobs/{job["id"]}"' not in text
    assert "flatmtl_api_request_duration_seconds_bucket" in text
    assert f'job_id="{job["id"]}"' in text
