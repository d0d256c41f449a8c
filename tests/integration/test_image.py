"""deploy/Dockerfile built for real, with no registry: a Debian bookworm base made here (debootstrap from the
machine's own apt mirror, then `docker import`), the package's wheels built on this machine and installed in the
image with no network. The image then runs as it is deployed: configured by environment variables alone, as a
non-root user holding one capability (CAP_DAC_READ_SEARCH), with the Docker socket and Docker's containers
folder mounted. Another container's lines must arrive, with the Docker host's name as host.name (not the
container id), and the shipper's own lines must not. It runs with deploy/compose.yaml's settings.

Costs about 2 minutes the first time on a machine (the base image is kept, tagged shipper-base:bookworm).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shipper.config import load_dict
from tests.conftest import SESSION, SESSION_LABEL, TEST_LABEL, require

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "shipper-base:bookworm"
IMAGE = f"shipper-image-test:{SESSION}"
IMAGE_UID = 10001
DOCKER_SOCK = "/var/run/docker.sock"
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def apt_mirror() -> str:
    """The Debian mirror this machine's apt is configured with (deb822 .sources or one-line .list files)."""
    files = [*sorted(glob.glob("/etc/apt/sources.list.d/*.sources")), "/etc/apt/sources.list",
             *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]
    for path in files:
        with contextlib.suppress(OSError):
            text = Path(path).read_text()
            if path.endswith(".sources"):
                for stanza in re.split(r"\n\s*\n", text):
                    uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                    suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
                    if uris and suites and "bookworm" in suites.group(1).split():
                        return uris.group(1)
            else:
                for line in text.splitlines():
                    m = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", line)
                    if m:
                        return m.group(1)
    return "http://deb.debian.org/debian"


def make_base_image(client: Any, tmp: Path) -> None:
    """debootstrap a minimal bookworm with python3 (3.11, what the cp311 wheels need) and import it."""
    debootstrap = shutil.which("debootstrap")
    require("debootstrap", debootstrap is not None, "deploy/setup.sh --test installs it")
    rootfs = tmp / "rootfs"
    r = subprocess.run([str(debootstrap), "--variant=minbase", "--include=python3", "bookworm", str(rootfs),
                        apt_mirror()], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    tar_path = tmp / "rootfs.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(rootfs, arcname=".")
    shutil.rmtree(rootfs, ignore_errors=True)
    with tar_path.open("rb") as f:
        repo, tag = BASE_IMAGE.split(":")
        client.api.import_image_from_data(f, repository=repo, tag=tag, changes=[f"ENV PATH={DEBIAN_PATH}"])
    tar_path.unlink()


@pytest.fixture(scope="module")
def image(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("image")
    try:
        docker_client.images.get(BASE_IMAGE)
    except Exception:
        make_base_image(docker_client, tmp)
    context = tmp / "context"  # the repository's layout, holding only what the Dockerfile copies
    (context / "deploy").mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "entrypoint.sh", context / "deploy" / "entrypoint.sh")
    env = {k: v for k, v in os.environ.items() if k != "SHIPPER_COMPILE"}  # the image's wheel: pure Python
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                        f"{ROOT}[fast]", "pip", "-w", str(context / "build" / "wheels")],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    wheels = os.listdir(context / "build" / "wheels")
    assert any(w.startswith("shipper-") for w in wheels) and any("cp311" in w for w in wheels), wheels
    r = subprocess.run(["docker", "build", "--quiet", "--network", "none", "-f", str(ROOT / "deploy" / "Dockerfile"),
                        "--build-arg", f"BASE={BASE_IMAGE}", "-t", IMAGE, str(context)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    yield IMAGE
    with contextlib.suppress(Exception):
        docker_client.images.remove(IMAGE, force=True)


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def test_image_is_built_as_documented(docker_client: Any, image: str) -> None:
    attrs = docker_client.images.get(image).attrs
    cfg = attrs["Config"]
    assert cfg["User"].split(":")[0] == str(IMAGE_UID)  # not root
    assert "127.0.0.1:9125/health" in " ".join(cfg["Healthcheck"]["Test"])
    env = {"SHIPPER_SINKS_OUT_TYPE": "null", "SHIPPER_BUFFER_MAX_EVENTS": "77"}
    out = docker_client.containers.run(image, ["check", "--print"], remove=True, stderr=True, environment=env)
    text = out.decode()
    assert 'type = "null"' in text and "max_events = 77" in text and 'dir = "/var/lib/shipper"' in text
    no_pip = "import importlib.util, sys; sys.exit(importlib.util.find_spec('pip') is not None)"
    docker_client.containers.run(image, ["-c", no_pip], remove=True, entrypoint="/opt/shipper/bin/python3")


def compose_service() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")  # in the test extras
    doc = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    return dict(doc["services"]["shipper"])


def test_compose_environment_is_a_valid_config() -> None:
    """Every SHIPPER_ variable in deploy/compose.yaml is a key, with a value the key accepts."""
    svc = compose_service()
    env = {k: str(v) for k, v in svc["environment"].items()}
    cfg = load_dict({}, env=env)
    assert cfg.buffer.type.value == "disk" and "local" in cfg.sinks
    mounts = {v.split(":")[1]: v for v in svc["volumes"]}
    assert mounts["/var/lib/docker/containers"].endswith(":ro")
    assert DOCKER_SOCK in mounts and "/var/lib/shipper" in mounts
    assert svc["cap_drop"] == ["ALL"] and svc["cap_add"] == ["DAC_READ_SEARCH"]


@pytest.mark.parametrize("discovery", ["api", "files"])
def test_image_ships_another_containers_lines_configured_by_env_only(
        docker_client: Any, image: str, run_container: Any, tmp_path: Path, discovery: str) -> None:
    """The image run as deploy/compose.yaml runs it (its environment, user, capabilities, mounts), with only the
    sink's path and the selection changed for the test; and as its comments say to run it without the Docker
    socket (discovery = "files", the host's name from its mounted /etc/hostname)."""
    svc = compose_service()
    if discovery == "files":
        svc["volumes"] = [v for v in svc["volumes"] if not v.startswith(DOCKER_SOCK)]
        svc["group_add"] = []
        svc["environment"] |= {"SHIPPER_DOCKER_DISCOVERY": "files", "SHIPPER_HOST_NAME_FILE": "/etc/host-hostname",
                               "SHIPPER_DOCKER_SCAN_INTERVAL_SECS": "0.2"}
    run = uuid.uuid4().hex[:10]
    label = {"shipper.test.run": run}
    out = tmp_path / "out"
    out.mkdir()
    os.chown(out, IMAGE_UID, IMAGE_UID)
    volume = docker_client.volumes.create(f"shipper-image-test-{run}", labels={SESSION_LABEL: SESSION})
    info = docker_client.info()
    sock_gid = str(os.stat(DOCKER_SOCK).st_gid)
    volumes: dict[str, dict[str, str]] = {}
    for spec in svc["volumes"]:
        src, dst, *mode = spec.split(":")
        if not src.startswith("/"):
            src = volume.name  # the named state volume
        elif dst == "/var/lib/docker/containers":
            src = f"{info['DockerRootDir']}/containers"
        volumes[src] = {"bind": dst, "mode": mode[0] if mode else "rw"}
    volumes[str(out)] = {"bind": "/out", "mode": "rw"}
    env = {k: str(v) for k, v in svc["environment"].items()} | {
        "SHIPPER_SELECT_INCLUDE_LABELS": f"shipper.test.run={run}",
        "SHIPPER_SINKS_LOCAL_PATH": "/out/events.jsonl",
        "SHIPPER_DOCKER_POLL_INTERVAL_SECS": "50ms",
        "SHIPPER_STATE_FLUSH_INTERVAL_SECS": "0.2",
        "SHIPPER_MULTILINE_FLUSH_TIMEOUT_SECS": "0.3",
        "SHIPPER_TELEMETRY_LOG_LEVEL": "debug",  # plenty of its own lines, which must not be shipped
    }
    groups = [sock_gid if g.startswith("${DOCKER_GID") else g for g in svc["group_add"]]
    shipper = docker_client.containers.run(
        image, detach=True, name=f"shipper-image-test-{run}",
        labels={TEST_LABEL: "1", SESSION_LABEL: SESSION, **label},  # it matches its own selection on purpose
        environment=env, volumes=volumes, user=svc["user"], cap_drop=svc["cap_drop"], cap_add=svc["cap_add"],
        group_add=groups, read_only=svc["read_only"])
    try:
        deadline = time.monotonic() + 60
        while b"starting" not in shipper.logs() and time.monotonic() < deadline:
            shipper.reload()
            assert shipper.status != "exited", shipper.logs().decode()
            time.sleep(0.2)
        app = run_container("sh -c 'for i in 1 2 3 4 5 6 7 8 9 10; do echo image-line-$i; done; sleep 1'",
                            labels=label)
        evs: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            evs = events(out / "events.jsonl")
            if sum(1 for e in evs if e["container"]["name"] == app.name) >= 10:
                break
            time.sleep(0.2)
        logs = shipper.logs().decode()
        mine = [e for e in evs if e["container"]["name"] == app.name]
        assert [e["message"] for e in mine] == [f"image-line-{i}" for i in range(1, 11)], logs[-4000:]
        want_host = info["Name"] if discovery == "api" else Path("/etc/hostname").read_text().strip()
        assert {e["host"]["name"] for e in mine} == {want_host}, "host.name must be the Docker host's name"
        assert not [e for e in evs if e["container"]["id"] == shipper.id], "shipper shipped its own lines"
        assert "via=JsonFileSource" in logs, "the json-file must be read with the one capability it was given"
        assert "Traceback" not in logs
        health = docker_client.images.get(image).attrs["Config"]["Healthcheck"]["Test"]
        assert health[0] == "CMD"
        code, said = shipper.exec_run(health[1:])
        assert code == 0, f"the image's HEALTHCHECK fails against the running admin server: {said!r}"
        st = os.stat(out / "events.jsonl")
        assert st.st_uid == IMAGE_UID and st.st_mode & 0o077 == 0
        shipper.stop(timeout=30)
        shipper.reload()
        assert shipper.attrs["State"]["ExitCode"] == 0, shipper.logs().decode()[-3000:]
    finally:
        with contextlib.suppress(Exception):
            shipper.remove(force=True)
        with contextlib.suppress(Exception):
            volume.remove(force=True)
