"""Control-plane commands of ``flatmtl``: serve, submit, jobs, logs, cancel, token.

``commands`` is added to the ``flatmtl`` group by ``workers/cli.py``. Everything but ``serve`` and
``token`` talks to the REST API (``--url``, ``--token`` or FLATMTL_API_URL / FLATMTL_TOKEN), so it
works against a remote server; nothing here imports torch or ray. httpx and the database layer belong to
the ``service`` extra and are imported inside the commands, so the base install's ``flatmtl`` starts.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

if TYPE_CHECKING:
    import httpx

JOB_STATES = ("queued", "running", "succeeded", "partially_failed", "failed", "cancelled")
TERMINAL = ("succeeded", "partially_failed", "failed", "cancelled")
url_option = click.option(
    "--url", envvar="FLATMTL_API_URL", default="http://127.0.0.1:8000", show_default=True, help="The API's base URL."
)
token_option = click.option("--token", envvar="FLATMTL_TOKEN", default=None, help="API token (FLATMTL_TOKEN).")


def make_client(url: str, token: str | None) -> httpx.Client:
    """The HTTP client the commands use (tests substitute one bound to an in-process app)."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30.0)


def call_api(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """The JSON answer, or exit 1 with the server's message and every field error."""
    import httpx

    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as error:
        raise click.ClickException(f"cannot reach the API at {client.base_url}: {error}") from None
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text[:500]}
        lines = [f"{response.status_code}: {body.get('message', '')}"]
        lines += [f"  {e['field'] or '(body)'} = {e['value']!r}: {e['message']}" for e in body.get("errors", [])]
        raise click.ClickException("\n".join(lines))
    return response.json()


@click.command("serve")
@click.option("--host", default=None, help="Default: the api_host setting.")
@click.option("--port", type=int, default=None, help="Default: the api_port setting.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="API processes sharing the port, one core each.",
)
@click.option(
    "--access-log/--no-access-log", default=True, show_default=True, help="Log every request (uvicorn's access log)."
)
def serve(host: str | None, port: int | None, config: Path | None, workers: int, access_log: bool) -> None:
    """Run the REST API (migrates the database first)."""
    from flatmtl.api.server import serve as serve_api
    from flatmtl.service.settings import load_settings

    serve_api(load_settings(config), host=host, port=port, workers=workers, access_log=access_log)


def _read_submission(path: Path) -> dict[str, Any]:
    """A spec file (YAML or JSON): either a bare train/sweep spec or ``{spec: ..., priority: ...}``."""
    from flatmtl.service.specs.base import load_yaml

    try:
        document = load_yaml(path.read_text())
    except yaml.YAMLError as error:
        raise click.ClickException(f"{path}: not valid YAML or JSON: {error}") from None
    if not isinstance(document, dict):
        raise click.ClickException(f"{path}: expected a mapping, got {type(document).__name__}")
    return document if "spec" in document else {"spec": document}


@click.command("submit")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--priority", type=int, default=None, help="Higher runs first.")
@click.option("--max-attempts", type=int, default=None, help="Attempts before a crashed job fails.")
@click.option("--idempotency-key", default=None, help="Resubmitting with the same key returns the same job.")
@click.option(
    "--code",
    "code_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Ship this directory with the job (needs the code scope); the spec's problem is module:attribute in it.",
)
@click.option("--wait", is_flag=True, help="Show progress until the job ends; exit 1 unless it succeeded.")
@click.option("--poll", type=float, default=1.0, show_default=True, help="Seconds between polls with --wait.")
@url_option
@token_option
def submit(
    spec: Path,
    priority: int | None,
    max_attempts: int | None,
    idempotency_key: str | None,
    code_dir: Path | None,
    wait: bool,
    poll: float,
    url: str,
    token: str | None,
) -> None:
    """Submit the job in SPEC (YAML or JSON) and print its id."""
    body = _read_submission(spec)
    for key, value in (("priority", priority), ("max_attempts", max_attempts), ("idempotency_key", idempotency_key)):
        if value is not None:
            body[key] = value
    archive = None if code_dir is None else _pack(code_dir)
    with make_client(url, token) as client:
        if archive is not None:
            uploaded = call_api(
                client, "POST", "/v1/code", content=archive, headers={"Content-Type": "application/octet-stream"}
            )
            target = body["spec"].get("base", body["spec"]) if isinstance(body["spec"], dict) else None
            if target is None:
                raise click.UsageError(f"{spec}: the spec is not a mapping", ctx=None)
            target["code"] = uploaded["digest"]
        job = call_api(client, "POST", "/v1/jobs", json=body)
        click.echo(job["id"])
        if wait:
            job = _wait(client, job, poll)
            click.echo(f"job {job['id']} {job['state']}" + (f": {job['error']}" if job.get("error") else ""), err=True)
            if job["state"] != "succeeded":
                sys.exit(1)


def _pack(directory: Path) -> bytes:
    """The directory as an archive within the default limit (the server checks its own), or exit 2."""
    from flatmtl.service.code import CodeArchiveError, pack
    from flatmtl.service.settings import Settings

    try:
        return pack(directory, Settings.model_fields["code_max_bytes"].default)
    except CodeArchiveError as error:
        raise click.BadParameter(str(error), param_hint="--code") from None


def _wait(client: httpx.Client, job: dict[str, Any], poll: float) -> dict[str, Any]:
    from tqdm import tqdm

    with tqdm(
        total=100, desc=f"job {job['id']}", unit="%", file=sys.stderr, bar_format="{l_bar}{bar}| {postfix}"
    ) as bar:
        while job["state"] not in TERMINAL:
            time.sleep(poll)
            job = call_api(client, "GET", f"/v1/jobs/{job['id']}")
            done = round(100 * (job.get("progress") or 0.0))
            bar.update(done - bar.n)
            bar.set_postfix_str(f"{job['state']} attempt {job['attempt']}/{job['max_attempts']}")
    return job


@click.command("jobs")
@click.option("--state", multiple=True, type=click.Choice(JOB_STATES))
@click.option("--kind", multiple=True, type=click.Choice(["train", "sweep"]))
@click.option("--name", default=None)
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@url_option
@token_option
def jobs_command(
    state: tuple[str, ...],
    kind: tuple[str, ...],
    name: str | None,
    limit: int,
    as_json: bool,
    url: str,
    token: str | None,
) -> None:
    """List jobs, newest first."""
    params: dict[str, Any] = {"state": list(state), "kind": list(kind), "limit": limit}
    if name:
        params["name"] = name
    with make_client(url, token) as client:
        page = call_api(client, "GET", "/v1/jobs", params=params)
    if as_json:
        click.echo(json.dumps(page["items"], indent=2))
        return
    click.echo(f"{'ID':>6}  {'KIND':<5}  {'STATE':<16}  {'PROGRESS':>8}  {'CREATED':<19}  {'TRIALS':<24}  NAME")
    for job in page["items"]:
        progress = "" if job["progress"] is None else f"{100 * job['progress']:.0f}%"
        created = job["created_at"][:19].replace("T", " ")
        click.echo(
            f"{job['id']:>6}  {job['kind']:<5}  {job['state']:<16}  {progress:>8}  {created:<19}  "
            f"{trial_counts(job):<24}  {job['name'] or ''}"
        )


def trial_counts(job: dict[str, Any]) -> str:
    """A finished sweep's trials by state (``3 succeeded, 1 failed``); empty for anything else."""
    counts = (job.get("result") or {}).get("trials")
    if not isinstance(counts, dict):
        return ""
    return ", ".join(f"{number} {state}" for state, number in sorted(counts.items()))


@click.command("logs")
@click.argument("job_id", type=int)
@click.option("--tail", type=click.IntRange(0, 100_000), default=200, show_default=True)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the job ends.")
@click.option("--poll", type=float, default=1.0, show_default=True)
@url_option
@token_option
def logs(job_id: int, tail: int, follow: bool, poll: float, url: str, token: str | None) -> None:
    """Print the end of a job's log."""
    with make_client(url, token) as client:
        page = call_api(client, "GET", f"/v1/jobs/{job_id}/logs", params={"tail": tail})
        for line in page["lines"]:
            click.echo(line)
        while follow:
            state = call_api(client, "GET", f"/v1/jobs/{job_id}")["state"]
            page = call_api(client, "GET", f"/v1/jobs/{job_id}/logs", params={"offset": page["next_offset"]})
            for line in page["lines"]:
                click.echo(line)
            if state in TERMINAL:
                break
            time.sleep(poll)


@click.command("cancel")
@click.argument("job_id", type=int)
@url_option
@token_option
def cancel(job_id: int, url: str, token: str | None) -> None:
    """Cancel a queued or running job."""
    with make_client(url, token) as client:
        job = call_api(client, "POST", f"/v1/jobs/{job_id}/cancel")
    click.echo(f"job {job['id']} {job['state']}")


@click.group("token")
def token() -> None:
    """Manage API tokens (directly on the database; run where the server's settings apply)."""


@token.command("create")
@click.option("--user", required=True, help="Who the token acts as.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(["read", "read_all", "submit", "code", "admin"]),
    default=("submit",),
    show_default=True,
    help="Repeatable. read and submit: one's own jobs; read_all: every user's; code: ship code with jobs "
    "(it runs with the worker's rights); admin implies everything.",
)
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
def token_create(user: str, scopes: tuple[str, ...], config: Path | None) -> None:
    """Create a token and print it (it is stored hashed and cannot be shown again)."""
    from flatmtl.service.db import Database
    from flatmtl.service.settings import load_settings
    from flatmtl.service.tokens import create_token

    settings = load_settings(config)
    database = Database.from_settings(settings)
    try:
        database.migrate()
        try:
            click.echo(create_token(database, settings.token_key(), user, scopes))
        except ValueError as error:
            raise click.ClickException(str(error)) from None
    finally:
        database.dispose()


@token.command("revoke")
@click.argument("prefix")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
def token_revoke(prefix: str, config: Path | None) -> None:
    """Revoke the tokens whose shown prefix (first 11 characters) is PREFIX."""
    from flatmtl.service.db import Database
    from flatmtl.service.errors import NotFoundError
    from flatmtl.service.settings import load_settings
    from flatmtl.service.tokens import revoke_token

    database = Database.from_settings(load_settings(config))
    try:
        click.echo(f"revoked {revoke_token(database, prefix)} token(s)")
    except NotFoundError as error:
        raise click.ClickException(error.message) from None
    finally:
        database.dispose()


commands: list[click.Command] = [serve, submit, jobs_command, logs, cancel, token]
