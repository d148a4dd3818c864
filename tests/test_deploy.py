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
