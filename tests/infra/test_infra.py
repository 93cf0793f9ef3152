"""Static checks of infra/: manifests, Dockerfiles and every `humanseg-batch` command they run.

Nothing here builds an image or talks to a cluster (there is no Docker engine or
Kubernetes on the test machines); these tests catch the drift that breaks a
deploy quietly: a renamed CLI option, a Dockerfile that no longer installs the
package, two copies of the cluster spec that disagree.
"""
from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
from packaging.requirements import Requirement  # noqa: E402
from packaging.specifiers import SpecifierSet  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
DOCKERFILES = sorted(p for p in (INFRA / "docker").glob("Dockerfile*") if p.suffix != ".dockerignore")
YAML_FILES = sorted(INFRA.rglob("*.yaml")) + sorted(INFRA.rglob("*.yml"))
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
CLUSTER_COMMAND_KEYS = {"initialization_commands", "setup_commands", "head_setup_commands",
                        "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands"}


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def load_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_objects(kind: str) -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in load_docs(path) if doc.get("kind") == kind]


def one(kind: str) -> dict:
    objs = k8s_objects(kind)
    assert len(objs) == 1, f"expected one {kind} under infra/k8s, found {len(objs)}"
    return objs[0]


def dependency_specifier(name: str) -> SpecifierSet:
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        if req.name == name:
            return req.specifier
    raise AssertionError(f"{name} is not a dependency in pyproject.toml")


def pod_specs(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec.get("workerGroupSpecs", [])]
    return [group["template"]["spec"] for group in groups]


# ---------------------------------------------------------------- Dockerfiles

def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def dockerfile_args(instructions) -> dict[str, str]:
    args = {}
    for keyword, rest in instructions:
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value.strip('"')
    return args


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def copy_sources(instructions) -> list[str]:
    sources = []
    for keyword, rest in instructions:
        if keyword == "COPY":
            words = [w for w in shlex.split(rest) if not w.startswith("--")]
            sources.extend(words[:-1])
    return sources


def dockerignore_patterns(dockerfile: Path) -> list[str]:
    """Lines of the `<Dockerfile>.dockerignore` BuildKit uses for this Dockerfile ([] if none)."""
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if not ignore.exists():
        return []
    return [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def in_build_context(path: str, patterns: list[str]) -> bool:
    """Docker's rule, closely enough for these files: the last pattern matching the path or a parent wins."""
    parents = [str(Path(*Path(path).parts[:n])) for n in range(1, len(Path(path).parts) + 1)]
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        any_depth = glob.startswith("**/")
        glob = glob.removeprefix("**/")
        if any(fnmatch.fnmatchcase(p, glob) or (any_depth and fnmatch.fnmatchcase(p, "*/" + glob))
               for p in parents):
            included = negated
    return included


def torch_pins_of_setup_path() -> set[str]:
    """torch==X in constraints-cpu.txt, which make install, .ci/run and the wheel check give to every pip call."""
    text = (REPO / "constraints-cpu.txt").read_text()
    pins = set(re.findall(r"^torch==([\w.]+)(?:\+\w+)?\s*$", text, re.M))  # the version, without +cpu
    assert len(pins) == 1, f"constraints-cpu.txt should pin torch exactly once, found {sorted(pins)}"
    return pins


def test_every_pip_call_of_the_setup_path_takes_the_constraints():
    """A pip call without them lets the resolver replace the pinned CPU torch (seen: 2.14.1 + CUDA, 6.4 GB)."""
    calls = []
    for path in [REPO / "Makefile", *sorted((REPO / ".ci").glob("*"))]:
        text = re.sub(r"\\\n", " ", path.read_text())
        calls += [(path.name, line) for line in text.splitlines()
                  if re.search(r"pip(3)?\b.*\binstall\b", line) and not line.lstrip().startswith("#")]
    assert calls, "no pip install found in the Makefile or .ci/"
    for name, line in calls:
        assert re.search(r"-c\s+(\S*constraints-cpu\.txt|\$\(CONSTRAINTS\))", line), (
            f"{name}: `{line.strip()}` runs pip without -c constraints-cpu.txt")


# Ubuntu releases to the python3 they ship, for CUDA images that install Python with apt.
UBUNTU_PYTHON = {"20.04": "3.8", "22.04": "3.10", "24.04": "3.12"}


def base_python_version(instructions) -> str:
    args = dockerfile_args(instructions)
    base = expand(next(rest for kw, rest in instructions if kw == "FROM"), args).split()[0]
    if m := re.match(r"(?:docker\.io/)?(?:library/)?python:(\d+\.\d+)", base):
        return m.group(1)
    if m := re.search(r"ubuntu(\d+\.\d+)", base):
        return UBUNTU_PYTHON[m.group(1)]
    raise AssertionError(f"cannot tell the Python version of base image {base}")


def context_files(path: Path, patterns: list[str]) -> list[Path]:
    """Files under path that reach the build context; excluded folders are not walked (venvs are huge)."""
    if path.is_file():
        return [path] if in_build_context(rel(path), patterns) else []
    files = []
    for folder, subfolders, names in os.walk(path):
        subfolders[:] = [d for d in subfolders if in_build_context(rel(Path(folder, d)), patterns)]
        files += [Path(folder, n) for n in names if in_build_context(rel(Path(folder, n)), patterns)]
    return files


@pytest.fixture(params=DOCKERFILES, ids=lambda p: p.name)
def dockerfile(request):
    return request.param


def test_dockerfiles_exist():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile", "Dockerfile.cpu"}


def test_dockerfile_installs_the_project_from_copied_source(dockerfile):
    instructions = dockerfile_instructions(dockerfile)
    sources = copy_sources(instructions)
    project = PYPROJECT["project"]
    needed = {"pyproject.toml", project["readme"], *PYPROJECT["tool"]["setuptools"]["package-dir"].values()}
    missing = needed - set(sources)
    assert not missing, f"{dockerfile.name} does not COPY {sorted(missing)}, which `pip install .` needs"
    # the folder pyproject.toml was copied into, as `pip install` would name it
    project_dir = next(shlex.split(rest)[-1] for kw, rest in instructions
                       if kw == "COPY" and "pyproject.toml" in shlex.split(rest)[:-1])
    targets = {project_dir, project_dir.rstrip("/")}  # "./" -> ".", "/src/" -> "/src"
    runs = [shlex.split(rest) for kw, rest in instructions if kw == "RUN"]
    installs_source = any(words[i:i + 2] == ["pip", "install"] and targets & set(words[i + 2:])
                          for words in runs for i in range(len(words)))
    assert installs_source, f"{dockerfile.name} never runs `pip install {project_dir}` on the copied source"


def test_dockerfile_copies_only_files_that_exist_and_are_in_the_context(dockerfile):
    sources = copy_sources(dockerfile_instructions(dockerfile))
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
    patterns = dockerignore_patterns(dockerfile)
    left_out = [source for source in sources if not in_build_context(source, patterns)]
    assert not left_out, f"{dockerfile.name}.dockerignore keeps {left_out} out of the build context"


def test_build_context_leaves_out_local_virtualenvs(dockerfile):
    patterns = dockerignore_patterns(dockerfile)
    assert patterns, f"{dockerfile.name} has no .dockerignore: the whole repository, venvs included, is sent"
    for path in [".venv/bin/python", "model/recipe/.venv-teacher/bin/python", "jobs/__pycache__/cli.pyc",
                 "tests/infra/test_infra.py", "out/demo/run.json"]:
        assert not in_build_context(path, patterns), f"{path} would be sent to the Docker daemon"
    assert in_build_context("model/unet.py", patterns)


def test_dockerfile_python_satisfies_requires_python(dockerfile):
    instructions = dockerfile_instructions(dockerfile)
    python = base_python_version(instructions)
    declared = dockerfile_args(instructions).get("PYTHON_VERSION")
    assert declared == python, f"{dockerfile.name}: ARG PYTHON_VERSION={declared} but the base has Python {python}"
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(python + ".0")


def test_dockerfile_pins_torch_like_the_setup_path_and_ray_like_kuberay(dockerfile):
    args = dockerfile_args(dockerfile_instructions(dockerfile))
    assert args["TORCH_VERSION"] in torch_pins_of_setup_path()
    assert dependency_specifier("torch").contains(args["TORCH_VERSION"])
    assert dependency_specifier("ray").contains(args["RAY_VERSION"])
    for cluster in [one("RayCluster")["spec"], one("RayJob")["spec"]["rayClusterSpec"]]:
        assert cluster["rayVersion"] == args["RAY_VERSION"], "KubeRay's rayVersion must match the image's Ray"


def test_cpu_dockerfile_uses_the_cpu_torch_wheel():
    args = dockerfile_args(dockerfile_instructions(INFRA / "docker" / "Dockerfile.cpu"))
    assert args["TORCH_INDEX_URL"].rstrip("/").endswith("/whl/cpu")


def test_dockerfile_runs_as_non_root_and_smoke_tests_the_cli(dockerfile):
    instructions = dockerfile_instructions(dockerfile)
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, f"{dockerfile.name} must end as a non-root user"
    after_user = instructions[max(i for i, (kw, _) in enumerate(instructions) if kw == "USER"):]
    assert any(kw == "RUN" and "humanseg-batch --help" in rest for kw, rest in after_user), (
        f"{dockerfile.name} should run `humanseg-batch --help` as its final user at build time")


def test_package_builds_from_exactly_what_the_dockerfile_copies(dockerfile, tmp_path):
    """`pip install .` inside the image sees only the COPY'd files; build a wheel from the same set."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed")
    stage, patterns = tmp_path / "src", dockerignore_patterns(dockerfile)
    for source in copy_sources(dockerfile_instructions(dockerfile)):
        assert (REPO / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
        for file in context_files(REPO / source, patterns):
            (stage / rel(file)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, stage / rel(file))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path / "dist"), str(stage)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    wheel = zipfile.ZipFile(next((tmp_path / "dist").glob("*.whl")))
    names = set(wheel.namelist())
    for package, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        for module in (stage / folder).glob("*.py"):
            inside = "/".join([*package.split("."), module.name])
            assert inside in names, f"{folder}/{module.name} is missing from the wheel the image would install"
        for sub in (stage / folder).rglob("__init__.py"):
            if sub.parent != stage / folder:
                assert any(n.startswith(package.replace(".", "/") + "/" + str(sub.parent.relative_to(stage / folder)))
                           for n in names), f"subpackage {rel(sub.parent)} is missing from the wheel"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "humanseg-batch" in wheel.read(entry_points).decode()


# ------------------------------------------------------------------- YAML

@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_yaml_parses(path):
    docs = load_docs(path)
    assert docs and all(isinstance(doc, dict) for doc in docs)


def test_ray_cluster_launcher_autoscales_gpu_workers_with_instance_roles():
    config = load_docs(INFRA / "ray" / "cluster.yaml")[0]
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and all(t["max_workers"] > t.get("min_workers", 0) for t in gpu), "GPU workers must autoscale"
    assert any(t["resources"].get("GPU", 0) == 0 for t in workers.values()), "expected a CPU (decode) worker type"
    for name, node_type in types.items():
        assert "IamInstanceProfile" in node_type["node_config"], f"{name}: S3 access goes by instance profile"
        assert node_type.get("max_workers", 0) <= config["max_workers"]
    assert config["docker"]["image"]


def test_raycluster_has_an_autoscaling_gpu_group_and_a_cpu_group():
    cluster = one("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert isinstance(spec["headGroupSpec"]["rayStartParams"], dict)
    gpu_groups = []
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        if int(limits.get("nvidia.com/gpu", 0)) >= 1:
            gpu_groups.append(group)
    assert gpu_groups and any(g["maxReplicas"] > g["minReplicas"] for g in gpu_groups)
    assert len(gpu_groups) < len(spec["workerGroupSpecs"]), "expected a CPU worker group besides the GPU one"
    for pod in pod_specs(spec):
        assert pod["containers"][0]["image"]


def test_ray_pods_get_s3_access_through_an_irsa_service_account():
    accounts = {sa["metadata"]["name"]: sa for sa in k8s_objects("ServiceAccount")}
    for spec in [one("RayCluster")["spec"], one("RayJob")["spec"]["rayClusterSpec"]]:
        for pod in pod_specs(spec):
            account = accounts.get(pod.get("serviceAccountName"))
            assert account, f"pod uses undefined service account {pod.get('serviceAccountName')!r}"
            assert IRSA_ANNOTATION in account["metadata"].get("annotations", {})


def test_rayjob_runs_humanseg_on_a_throwaway_copy_of_the_raycluster():
    job = one("RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["entrypoint"].split()[:2] == ["humanseg-batch", "run"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    # created afresh every night, so a generated name rather than a fixed one
    assert job["metadata"].get("generateName") and "name" not in job["metadata"]
    assert spec["rayClusterSpec"] == one("RayCluster")["spec"], "rayjob.yaml and raycluster.yaml have drifted"


def test_cronjob_creates_the_rayjob_with_just_enough_rights():
    cron = one("CronJob")
    assert cron["apiVersion"] == "batch/v1"
    assert len(cron["spec"]["schedule"].split()) == 5
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in {"Never", "OnFailure"}
    account = pod["serviceAccountName"]
    assert account in {sa["metadata"]["name"] for sa in k8s_objects("ServiceAccount")}
    roles = {r["metadata"]["name"]: r for r in k8s_objects("Role")}
    granted = [roles[b["roleRef"]["name"]] for b in k8s_objects("RoleBinding")
               if any(s["kind"] == "ServiceAccount" and s["name"] == account for s in b["subjects"])]
    assert any("ray.io" in rule["apiGroups"] and "rayjobs" in rule["resources"] and "create" in rule["verbs"]
               for role in granted for rule in role["rules"]), f"{account} may not create RayJobs"

    argv = [*pod["containers"][0].get("command", []), *pod["containers"][0].get("args", [])]
    assert argv[:3] == ["kubectl", "create", "-f"], "generateName needs `kubectl create`, not apply"
    manifest = Path(argv[3])
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if Path(m["mountPath"]) == manifest.parent)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    generators = {g["name"]: g for g in load_docs(K8S / "kustomization.yaml")[0]["configMapGenerator"]}
    generator = generators[volume["configMap"]["name"]]
    assert manifest.name in generator["files"]
    assert one("RayJob") == load_docs(K8S / manifest.name)[0]


def test_kustomization_lists_existing_files():
    kustomization = load_docs(K8S / "kustomization.yaml")[0]
    files = [*kustomization["resources"], *(f for g in kustomization["configMapGenerator"] for f in g["files"])]
    for name in files:
        assert (K8S / name).is_file(), f"kustomization.yaml names missing {name}"


def test_kustomize_renders_the_cronjob_with_the_generated_configmap():
    done = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rendered = list(yaml.safe_load_all(done.stdout))
    config_map = next(d for d in rendered if d["kind"] == "ConfigMap")
    assert config_map["data"]["rayjob.yaml"] == (K8S / "rayjob.yaml").read_text()
    cron = next(d for d in rendered if d["kind"] == "CronJob")
    volumes = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
    assert config_map["metadata"]["name"] in {v.get("configMap", {}).get("name") for v in volumes}
    assert {d["metadata"].get("namespace") for d in rendered} == {"humanseg"}


def test_one_image_per_cluster_built_from_this_version():
    """Ray needs the same Ray and Python on every node, so each cluster runs a single image."""
    launcher = load_docs(INFRA / "ray" / "cluster.yaml")[0]
    launcher_images = {launcher["docker"]["image"]} | {
        t.get("docker", {}).get("worker_image") for t in launcher["available_node_types"].values()} - {None}
    kuberay_images = {c["image"] for spec in [one("RayCluster")["spec"], one("RayJob")["spec"]["rayClusterSpec"]]
                      for pod in pod_specs(spec) for c in pod["containers"]}
    version = PYPROJECT["project"]["version"]
    for images in (launcher_images, kuberay_images):
        assert len(images) == 1, f"one cluster, several images: {sorted(images)}"
        assert next(iter(images)).endswith(f":{version}-gpu"), "tag the image with the package version"


def test_no_credentials_in_infra():
    key_id = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
    for path in sorted(p for p in INFRA.rglob("*") if p.is_file()):
        text = path.read_text()
        assert not key_id.search(text), f"{rel(path)} contains what looks like an AWS access key id"
        assert not re.search(r"(?i)aws_secret_access_key\s*[=:]\s*\S", text), f"{rel(path)} sets a secret key"
    for path in DOCKERFILES:
        for keyword, rest in dockerfile_instructions(path):
            if keyword in {"ENV", "ARG"}:
                assert not re.search(r"AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN)", rest), rel(path)
    for pod in [p for spec in [one("RayCluster")["spec"]] for p in pod_specs(spec)]:
        for container in pod["containers"]:
            names = {e["name"] for e in container.get("env", [])}
            assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


# ------------------------------------------------- humanseg-batch invocations

SHELLS = {"bash", "sh", "/bin/bash", "/bin/sh"}


def invocations_in_shell(command: str) -> list[list[str]]:
    """The argument lists of each `humanseg-batch` call in a shell command line."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    found = []
    for i, token in enumerate(tokens):
        # `--repository-name humanseg-batch` is a value, `-- humanseg-batch run` a command
        is_value = i > 0 and tokens[i - 1].startswith("-") and tokens[i - 1] != "--"
        if token == "humanseg-batch" and not is_value:
            args = []
            for word in tokens[i + 1:]:
                if word and all(ch in "();<>|&" for ch in word):  # end of this simple command
                    break
                args.append(word)
            found.append(args)
    return found


def invocations_in_argv(argv: list[str]) -> list[list[str]]:
    if argv and argv[0] in SHELLS and "-c" in argv:
        return invocations_in_shell(argv[argv.index("-c") + 1])
    return invocations_in_shell(shlex.join(argv))


def invocations_in_yaml(node) -> list[list[str]]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "entrypoint" and isinstance(value, str):
                found += invocations_in_shell(value)
            elif key in CLUSTER_COMMAND_KEYS:
                found += [inv for command in value for inv in invocations_in_shell(command)]
            elif key == "containers":
                found += [inv for c in value for inv in invocations_in_argv([*c.get("command", []), *c.get("args", [])])]
            else:
                found += invocations_in_yaml(value)
    elif isinstance(node, list):
        found += [inv for item in node for inv in invocations_in_yaml(item)]
    return found


def invocations_in_dockerfile(path: Path) -> list[list[str]]:
    found = []
    for keyword, rest in dockerfile_instructions(path):
        if keyword in {"RUN", "CMD", "ENTRYPOINT", "HEALTHCHECK"}:
            rest = re.sub(r"^(--\S+\s+)*(CMD\s+)?", "", rest)  # HEALTHCHECK options
            found += invocations_in_argv(json.loads(rest)) if rest.startswith("[") else invocations_in_shell(rest)
    return found


SHELL_FENCES = {"bash", "sh", "shell", "console"}


def invocations_in_markdown(path: Path) -> list[list[str]]:
    """Calls in the shell code blocks; `[--flag]` (the docs' notation for optional) counts as `--flag`."""
    found, block, fence = [], [], None
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fence = line.strip()[3:].strip() if fence is None else None
            continue
        if fence not in SHELL_FENCES:
            continue
        block.append(re.sub(r"^\s*\$ ", "", line).rstrip("\\"))
        if line.rstrip().endswith("\\"):
            continue
        try:  # a quoted argument may run over several lines
            calls = invocations_in_shell("\n".join(block))
        except ValueError:
            continue
        found += [[re.sub(r"^\[(-.*)\]$", r"\1", word) for word in call] for call in calls]
        block = []
    assert not block, f"{path.name}: unterminated shell line {block}"
    return found


def all_invocations() -> list[tuple[str, list[str]]]:
    found = []
    for path in YAML_FILES:
        found += [(rel(path), inv) for doc in load_docs(path) for inv in invocations_in_yaml(doc)]
    for path in DOCKERFILES:
        found += [(rel(path), inv) for inv in invocations_in_dockerfile(path)]
    for path in [REPO / "README.md", *sorted(INFRA.rglob("*.md"))]:
        found += [(rel(path), inv) for inv in invocations_in_markdown(path)]
    return found


INVOCATIONS = all_invocations()


def test_invocations_are_found_where_expected():
    sources = {source for source, _ in INVOCATIONS}
    for expected in ["infra/k8s/rayjob.yaml", "infra/ray/cluster.yaml", "infra/docker/Dockerfile",
                     "infra/docker/Dockerfile.cpu", "infra/README.md"]:
        assert expected in sources, f"no `humanseg-batch` call found in {expected}"
    nightly = [args for source, args in INVOCATIONS if source == "infra/k8s/rayjob.yaml"]
    assert nightly[0][0] == "run" and nightly[0][1].startswith("s3://")
    assert "--executor" in nightly[0] and nightly[0][nightly[0].index("--executor") + 1] == "ray"


def test_invocation_parser_finds_calls_inside_shell_lines():
    line = "ray job submit --address http://h:8265 -- humanseg-batch run m.csv --output o && echo ok"
    assert invocations_in_shell(line) == [["run", "m.csv", "--output", "o"]]
    assert invocations_in_shell("humanseg-batch --help > /dev/null") == [["--help"]]
    assert invocations_in_shell("aws ecr create-repository --repository-name humanseg-batch") == []


def all_params(command) -> list:
    import click

    subcommands = command.commands.values() if isinstance(command, click.Group) else []
    return [*command.params, *(p for sub in subcommands for p in all_params(sub))]


@pytest.fixture(scope="module")
def cli():
    import click

    from humanseg_batch.jobs.cli import cli  # the CLI as it is now, not as the docs remember it

    # The docs' paths are placeholders (data/, manifest.csv): check option names and values, not the disk.
    with pytest.MonkeyPatch.context() as patch:
        for param in all_params(cli):
            if isinstance(param.type, click.Path) and param.type.exists:
                patch.setattr(param.type, "exists", False)
        yield cli


def parse_invocation(cli, args: list[str]):
    """Parse like the shell would run it, down to the leaf command; its context, or click's error if invalid."""
    import click

    try:
        ctx = cli.make_context("humanseg-batch", list(args), resilient_parsing=False)
        command = cli
        while isinstance(command, click.Group):
            # click keeps the subcommand and its arguments here after parsing the group's own options
            protected = getattr(ctx, "_protected_args", None)
            rest = [*(ctx.protected_args if protected is None else protected), *ctx.args]
            if not rest:
                raise click.UsageError("missing a subcommand", ctx=ctx)
            name, command, rest = command.resolve_command(ctx, rest)
            ctx = command.make_context(name, rest, parent=ctx, resilient_parsing=False)
    except click.exceptions.Exit as done:  # --help, --version
        assert done.exit_code == 0
        return None
    return ctx


@pytest.mark.parametrize("source,args", INVOCATIONS, ids=[f"{s}:{' '.join(a[:1])}" for s, a in INVOCATIONS])
def test_invocation_is_valid_for_the_current_cli(cli, source, args):
    import click

    try:
        parse_invocation(cli, args)
    except click.ClickException as exc:
        pytest.fail(f"{source}: `humanseg-batch {shlex.join(args)}` is not valid for the current CLI: "
                    f"{exc.format_message()}")


def test_invocation_check_rejects_what_the_cli_would(cli):
    import click

    with pytest.raises(click.UsageError):
        parse_invocation(cli, ["run", "m.csv", "--output", "o", "--no-such-option"])
    with pytest.raises(click.UsageError):
        parse_invocation(cli, ["run", "--output", "o"])  # MANIFEST missing
    with pytest.raises(click.UsageError):
        parse_invocation(cli, ["no-such-command"])


# ------------------------------------------------ what the cluster files promise each other

def nightly_run_config(cli):
    """The RunConfig the RayJob's entrypoint resolves to, through the CLI's own layering of defaults and flags."""
    from humanseg_batch.jobs.cli import flags_to_config

    args = invocations_in_shell(one("RayJob")["spec"]["entrypoint"])[0]
    params = dict(parse_invocation(cli, args).params)
    for flag in ("overwrite", "wait", "compact_after", "quiet", "log_format", "debug"):   # options of the command, not the run
        params.pop(flag, None)
    return flags_to_config(params.pop("manifest"), params.pop("config_file"), **params)


def cpu_quantity(value) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_gpu_nodes_hold_the_model_actors_a_run_asks_for(cli):
    """Per GPU node or pod: whole actors at --gpus-per-actor, each with its --cpus-per-actor; at full scale, all of them."""
    from humanseg_batch.jobs.config import RunConfig

    launcher = load_docs(INFRA / "ray" / "cluster.yaml")[0]
    for cfg in [RunConfig(manifest="m.csv", output="o"), nightly_run_config(cli)]:
        for spec in [one("RayCluster")["spec"], one("RayJob")["spec"]["rayClusterSpec"]]:
            capacity = 0
            for group in spec["workerGroupSpecs"]:
                resources = group["template"]["spec"]["containers"][0]["resources"]
                gpus = float(resources["limits"].get("nvidia.com/gpu", 0))
                cpus = cpu_quantity(resources["limits"].get("cpu", resources["requests"]["cpu"]))  # KubeRay's num-cpus
                actors = int(gpus // cfg.gpus_per_actor)
                if gpus:
                    assert actors >= 1 and cpus >= actors * cfg.cpus_per_actor, f"{group['groupName']} fits no actor"
                capacity += actors * group["maxReplicas"]
            assert capacity >= max(cfg.model_actors, 1), f"the cluster grows to {capacity} actors, the run asks more"
        for name, node in launcher["available_node_types"].items():
            gpus, cpus = node["resources"].get("GPU", 0), node["resources"].get("CPU", 0)
            actors = int(gpus // cfg.gpus_per_actor)
            assert not gpus or (actors >= 1 and cpus >= actors * cfg.cpus_per_actor), f"{name} fits no actor"


def test_nightly_run_is_incremental_into_one_output(cli):
    """The CronJob creates this RayJob every night: same manifest, same OUT, no overwrite, so only new rows run."""
    entrypoint = one("RayJob")["spec"]["entrypoint"]
    assert not re.search(r"[$`]", entrypoint), "a per-night expansion (date, env) would give each night a new OUT"
    args = invocations_in_shell(entrypoint)[0]
    assert args[0] == "run" and "--overwrite" not in args
    cfg = nightly_run_config(cli)
    assert cfg.output.startswith("s3://") and cfg.manifest.startswith("s3://")


def test_pods_run_as_the_user_the_images_end_with():
    uids = {[rest for kw, rest in dockerfile_instructions(path) if kw == "USER"][-1].split(":")[0]
            for path in DOCKERFILES}
    assert len(uids) == 1 and next(iter(uids)).isdigit(), f"images end as {uids}: one numeric uid"
    for spec in [one("RayCluster")["spec"], one("RayJob")["spec"]["rayClusterSpec"]]:
        for pod in pod_specs(spec):
            assert str(pod["securityContext"]["runAsUser"]) in uids


def test_kuberay_clusters_use_token_auth_with_a_ray_that_has_it():
    """KubeRay refuses authOptions.mode=token below Ray 2.52 (its ValidateRayClusterSpec); without it, anyone who
    reaches the head's dashboard port can run code on the cluster."""
    for spec in [one("RayCluster")["spec"], one("RayJob")["spec"]["rayClusterSpec"]]:
        assert spec.get("authOptions", {}).get("mode") == "token"
        assert tuple(int(x) for x in spec["rayVersion"].split(".")[:2]) >= (2, 52)
