"""DVC and git at the edge: track a data folder, push it, read its md5, name the code commit."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
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
    from dvc.repo import Repo

    logging.getLogger("dvc").setLevel(logging.WARNING)  # no "To track the changes with git" hints
    try:
        return Repo(str(root))
    except Exception as exc:
        raise IngestError(
            f"{root}: not a DVC repository ({exc.__class__.__name__}); run `dvc init` there"
        ) from None


def dvc_root(root: Path) -> Path | None:
    """The DVC repository that holds `root` (it or a parent with a .dvc folder), if any."""
    for folder in (root.resolve(), *root.resolve().parents):
        if (folder / ".dvc").is_dir():
            return folder
    return None


def require_repo(root: Path) -> None:
    """Fail before anything is read or written when `root` is in no DVC repository."""
    if dvc_root(root) is None:
        raise IngestError(
            f"{root}: not in a DVC repository; `driftloop init` sets one up (or `dvc init`, "
            "`--no-scm` outside git, and a default remote)"
        )


def set_up(root: Path, remote: Path, *, own: bool = False) -> str | None:
    """Make `root` a DVC repository (`--no-scm` outside git) whose default remote is the local
    folder `remote`, analytics off; nothing when it already is in one (`own`: when it is one
    itself, not a folder of an enclosing one). What was done, or None."""
    if (root / ".dvc").is_dir() if own else dvc_root(root) is not None:
        return None
    import os

    from dvc.repo import Repo

    top = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    no_scm = top.returncode != 0
    subdir = not no_scm and Path(top.stdout.strip()).resolve() != root.resolve()
    logging.getLogger("dvc").setLevel(logging.WARNING)  # no "Initialized DVC repository."
    try:
        repo = Repo.init(str(root), no_scm=no_scm, subdir=subdir)
    except Exception as exc:
        raise IngestError(f"{root}: `dvc init` failed ({_first_line(exc)})") from None
    with contextlib.closing(repo):
        remote.mkdir(parents=True, exist_ok=True)
        with repo.config.edit() as conf:
            conf["core"]["analytics"] = False
            conf["core"]["remote"] = "local"
            # a path relative to the working directory, which DVC stores relative to its config
            conf["remote"]["local"] = {"url": os.path.relpath(remote.resolve())}
    if not no_scm:
        _git_ignore(root, remote.parent)
    where = "without git" if no_scm else "in its git repository"
    return f"DVC set up in {root} ({where}), default remote {remote}"


def _git_ignore(root: Path, state_dir: Path) -> None:
    """Keep the state folder (MLflow store, caches, the local remote) out of git."""
    try:
        inside = state_dir.resolve().relative_to(root.resolve())
    except ValueError:
        return
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(inside)], cwd=root, check=False, timeout=30
    )
    if ignored.returncode != 0:
        gitignore = root / ".gitignore"
        before = gitignore.read_text() if gitignore.exists() else ""
        sep = "" if not before or before.endswith("\n") else "\n"
        gitignore.write_text(f"{before}{sep}/{inside.as_posix()}/\n")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


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


# -- corruption checks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Corrupt:
    """A DVC object whose content no longer hashes to its name."""

    where: str  # "cache" or "remote"
    oid: str
    path: str  # the object's path in the cache or on the remote
    actual_md5: str
    tracked: str  # the project file it holds ("?" when no .dvc file names it)

    def line(self) -> str:
        return (
            f"corrupt {self.where} object {self.oid} ({self.tracked}) at {self.path}: "
            f"its content hashes to {self.actual_md5}"
        )


def _md5_of(fs: Any, path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with fs.open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _tracked_names(repo: Any) -> dict[str, str]:
    """Which project file each object holds, from the .dvc files and their folder manifests."""
    names: dict[str, str] = {}
    for out in (o for stage in repo.index.stages for o in stage.outs):
        oid = (out.hash_info.value or "") if out.hash_info else ""
        if not oid:
            continue
        names[oid] = str(out.fs_path)
        if oid.endswith(".dir"):
            with contextlib.suppress(Exception):
                cache = repo.cache.local
                with cache.fs.open(cache.oid_to_path(oid), "rb") as handle:
                    for entry in json.load(handle):
                        names[entry["md5"]] = f"{out.fs_path}/{entry['relpath']}"
    return names


def verify_objects(root: Path, *, remote: bool = False) -> tuple[int, list[Corrupt]]:
    """Rehash every object in the DVC cache (and the default remote): DVC trusts its state
    database (inode, mtime, size), so a flipped byte that keeps the mtime goes unseen by
    `dvc status`, and `dvc fetch` drops a corrupt remote copy silently. Returns (objects
    checked, the corrupt ones, each named with the project file it holds)."""
    with contextlib.closing(_repo(root)) as repo:
        names = _tracked_names(repo)
        stores = [("cache", repo.cache.local)]
        if remote:
            try:
                stores.append(("remote", repo.cloud.get_remote_odb()))
            except Exception as exc:
                reason = exc.__class__.__name__
                raise IngestError(f"{root}: no DVC remote to verify ({reason})") from None
        checked, bad = 0, []
        for where, odb in stores:
            for oid in odb.all():
                checked += 1
                path = odb.oid_to_path(oid)
                actual = _md5_of(odb.fs, path)
                if actual != oid.split(".")[0]:
                    bad.append(Corrupt(where, oid, str(path), actual, names.get(oid, "?")))
    return checked, bad
