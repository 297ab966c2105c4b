"""The work-pool base job templates in deployments/: every placeholder is a declared variable, defaults fill them."""

import json
import re

import pytest
from prefect.utilities.templating import apply_values

from dbpromote.deploying import TEMPLATES

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@pytest.mark.parametrize("name", ["process.json", "kubernetes/base-job-template.json"])
def test_every_placeholder_is_a_declared_variable_and_the_defaults_fill_them(name):
    template = json.loads((TEMPLATES / name).read_text())
    properties = template["variables"]["properties"]
    used = set(PLACEHOLDER.findall(json.dumps(template["job_configuration"])))
    assert used <= set(properties), used - set(properties)
    defaults = {key: spec["default"] for key, spec in properties.items() if "default" in spec}
    filled = apply_values(template["job_configuration"], defaults)
    assert filled["env"] and filled["env"]["PYTHONUNBUFFERED"] == "1"


def test_the_kubernetes_job_runs_the_worker_image_with_a_memory_limit():
    template = json.loads((TEMPLATES / "kubernetes/base-job-template.json").read_text())
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    job = apply_values(template["job_configuration"], defaults)["job_manifest"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "dbpromote-worker:latest"
    assert container["resources"]["limits"]["memory"] == "1Gi"
    assert job["spec"]["backoffLimit"] == 0  # a failed flow run is retried by Prefect, knowingly, not by Kubernetes
