"""The scheduling manifests parse and call the same entry points as the documented CLI."""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_cronjob_runs_the_retrain_entry_point() -> None:
    doc = yaml.safe_load((DEPLOY / "k8s-cronjob.yaml").read_text())
    assert doc["kind"] == "CronJob" and doc["spec"]["concurrencyPolicy"] == "Forbid"
    container = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert "python -m stages.retrain --params params.yaml --wait" in container["args"][0]
    env = {e["name"] for e in container["env"]}
    assert {"RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI"} <= env


def test_raycronjob_runs_the_pipeline_entry_point() -> None:
    doc = yaml.safe_load((DEPLOY / "raycronjob.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCronJob")
    assert doc["spec"]["jobTemplate"]["entrypoint"] == "python -m stages.all --params params.yaml"
    env = yaml.safe_load(doc["spec"]["jobTemplate"]["runtimeEnvYAML"])["env_vars"]
    assert env["DDPM_TRIGGER"] == "schedule"


def test_crontab_line_has_five_time_fields_and_the_entry_point() -> None:
    lines = [
        line
        for line in (DEPLOY / "crontab").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert len(lines) == 1
    fields = lines[0].split(None, 5)
    assert len(fields) == 6 and "-m stages.retrain --params params.yaml --wait" in fields[5]


def _env_entries(doc: object) -> list[dict[str, object]]:
    """Every `env` entry anywhere in a manifest."""
    if isinstance(doc, dict):
        own = doc.get("env") if isinstance(doc.get("env"), list) else []
        return [*own, *(e for v in doc.values() for e in _env_entries(v))]
    if isinstance(doc, list):
        return [e for v in doc for e in _env_entries(v)]
    return []


def test_manifests_authenticate_without_credentials_in_uris() -> None:
    """MLflow behind basic auth, credentials only from secrets, no user:token@ in any URI."""
    for name in ("k8s-cronjob.yaml", "raycronjob.yaml", "mlflow-server.yaml"):
        text = (DEPLOY / name).read_text()
        assert "@" not in "".join(line.split("#")[0] for line in text.splitlines()), name
        for doc in yaml.safe_load_all(text):
            for entry in _env_entries(doc):
                if str(entry["name"]).startswith(("MLFLOW_TRACKING_", "RAY_AUTH_TOKEN")) and (
                    entry["name"] != "MLFLOW_TRACKING_URI"
                ):
                    assert "secretKeyRef" in entry["valueFrom"], (name, entry)  # type: ignore[operator]
    cron = yaml.safe_load((DEPLOY / "k8s-cronjob.yaml").read_text())
    names = {e["name"] for e in _env_entries(cron)}
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "RAY_AUTH_TOKEN"} <= names
    server, service = yaml.safe_load_all((DEPLOY / "mlflow-server.yaml").read_text())
    command = server["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:4] == ["mlflow", "server", "--app-name", "basic-auth"]
    assert service["spec"]["type"] == "ClusterIP"
