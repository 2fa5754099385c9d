"""DVC and git at the edge: track a data folder, push it, read its md5, name the code commit."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock

from driftloop.errors import IngestError


@contextlib.contextmanager
def project_lock(lock_dir: Path, name: str, timeout: float = 600) -> Iterator[None]:
    """An inter-process lock under the project's state dir (one writer at a time)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / f"{name}.lock"), timeout=timeout):
        yield


def _repo(root: Path) -> Any:
    import logging

    from dvc.repo import Repo

    logging.getLogger("dvc").setLevel(logging.WARNING)  # no "To track the changes with git" hints
    try:
        return Repo(str(root))
    except Exception as exc:
        raise IngestError(
            f"{root}: not a DVC repository ({exc.__class__.__name__}); run `dvc init` there"
        ) from None


def dvc_file(root: Path, path: Path) -> Path:
    """The .dvc file that tracks a folder."""
    return path.with_name(path.name + ".dvc")


def track(root: Path, path: Path, *, push: bool = True) -> str:
    """`dvc add` a folder (and push it to the default remote); return its DVC md5."""
    with contextlib.closing(_repo(root)) as repo:
        repo.add([str(path)])
        if push and _default_remote(repo):
            repo.push(targets=[str(dvc_file(root, path))])
    return recorded_md5(root, path)


def _default_remote(repo: Any) -> str | None:
    core = repo.config.get("core", {})
    return core.get("remote") if isinstance(core, dict) else None


def recorded_md5(root: Path, path: Path) -> str:
    """The md5 that the folder's .dvc file records ('' when not tracked yet)."""
    file = dvc_file(root, path)
    if not file.exists():
        return ""
    outs = (yaml.safe_load(file.read_text()) or {}).get("outs") or [{}]
    return str(outs[0].get("md5", ""))


def is_in_sync(root: Path, path: Path) -> bool:
    """True when the folder on disk matches what its .dvc file records."""
    with contextlib.closing(_repo(root)) as repo:
        return not repo.status(targets=[str(dvc_file(root, path))])


def git_commit(root: Path) -> str:
    """HEAD of the project's git repository, with '-dirty' if tracked files changed."""

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False, timeout=30
        )
        return out.stdout.strip() if out.returncode == 0 else ""

    head = git("rev-parse", "HEAD")
    if not head:
        return "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{head}-dirty" if dirty else head
