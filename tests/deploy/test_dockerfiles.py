"""One Dockerfile per service, and what each installs: the scheduler's image has no torch."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import tomllib

from tests.deploy.deploy_files import DOCKER_DIR, REPO

ML_PACKAGES = {"torch", "transformers", "tokenizers", "safetensors", "accelerate", "numpy"}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;]", spec.strip().strip('"'), maxsplit=1)[0].lower().replace("_", "-")


def pip_installs(dockerfile: Path) -> tuple[set[str], set[str]]:
    """Returns (packages installed and kept, packages uninstalled again) from its RUN pip lines;
    a local project path stands for its pyproject dependencies, followed transitively."""
    installed: set[str] = set()
    removed: set[str] = set()
    for keyword, args in instructions(dockerfile):
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"]:
                skip_next = False
                for word in words[2:]:
                    if skip_next:
                        skip_next = False
                    elif word.startswith("-"):
                        skip_next = word in ("--index-url", "-i", "--extra-index-url", "-r", "-c")
                    elif word.startswith("${"):
                        continue
                    else:
                        installed |= (
                            local_closure(word) if word.startswith("./") else {requirement_name(word)}
                        )
            elif words[:3] == ["pip", "uninstall", "-y"]:
                removed |= {requirement_name(word) for word in words[3:]}
    return installed - removed, removed


LOCAL_PROJECTS = {
    "infermesh-shared": "shared",
    "infermesh-scheduler": "services/scheduler",
    "infermesh-worker": "services/worker",
    "infermesh-frontend": "services/frontend",
}


def local_closure(path: str) -> set[str]:
    project = tomllib.loads((REPO / path / "pyproject.toml").read_text())["project"]
    names = {project["name"]}
    for dependency in project.get("dependencies", []):
        name = requirement_name(dependency)
        names |= local_closure("./" + LOCAL_PROJECTS[name]) if name in LOCAL_PROJECTS else {name}
    return names


def test_one_dockerfile_per_service() -> None:
    assert sorted(p.name for p in DOCKER_DIR.glob("*.Dockerfile")) == [
        "frontend.Dockerfile",
        "scheduler.Dockerfile",
        "worker.Dockerfile",
    ]


def test_scheduler_image_installs_no_torch_nor_tokenizer() -> None:
    installed, removed = pip_installs(DOCKER_DIR / "scheduler.Dockerfile")
    assert {"infermesh-scheduler", "infermesh-shared", "grpcio"} <= installed
    assert not installed & ML_PACKAGES, installed & ML_PACKAGES
    assert removed == {"grpcio-tools"}
    copied = " ".join(
        args for keyword, args in instructions(DOCKER_DIR / "scheduler.Dockerfile") if keyword == "COPY"
    )
    assert "services/worker" not in copied and "services/frontend" not in copied


def test_worker_image_installs_torch_and_the_worker() -> None:
    installed, _ = pip_installs(DOCKER_DIR / "worker.Dockerfile")
    assert {"torch", "safetensors", "infermesh-worker", "infermesh-shared"} <= installed
    assert "infermesh-frontend" not in installed and "tokenizers" not in installed


def test_frontend_image_installs_the_tokenizer_but_no_torch() -> None:
    installed, _ = pip_installs(DOCKER_DIR / "frontend.Dockerfile")
    assert {"tokenizers", "infermesh-frontend", "infermesh-shared"} <= installed
    assert "torch" not in installed and "infermesh-worker" not in installed


def test_the_check_sees_torch_when_it_is_there(tmp_path) -> None:
    # The parser must not be blind: a scheduler Dockerfile that pulls torch in is caught.
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:3.12-slim\nRUN pip install --no-cache-dir \\\n    'torch==2.4' ./shared\n")
    installed, _ = pip_installs(bad)
    assert "torch" in installed and "redis" in installed


def test_each_image_runs_its_own_console_script() -> None:
    for service in ("frontend", "scheduler", "worker"):
        cmd = [
            args for keyword, args in instructions(DOCKER_DIR / f"{service}.Dockerfile") if keyword == "CMD"
        ]
        assert len(cmd) == 1 and cmd[0].startswith(f'["infermesh-{service}"')
