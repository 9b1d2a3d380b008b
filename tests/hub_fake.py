"""A stand-in for the Hugging Face hub, which the machines twinrank is built on cannot reach.

Each repository id is a local folder. ``list_repo_files`` lists it as ``HfApi`` would, and
``snapshot_download`` copies the files its ``allow_patterns`` match into a real cache layout
(``models--ORG--NAME/snapshots/COMMIT/``, ``refs/main``) under the cache the test gives,
so ``try_to_load_from_cache``, transformers' ``from_pretrained(local_files_only=True)``
and a process started with ``HF_HUB_OFFLINE=1`` read it exactly as they read a real
download. Each download is recorded with whether huggingface_hub's progress bars
(what a real download shows on stderr) were on at the time.
"""

from __future__ import annotations

import fnmatch
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Download:
    repo: str
    patterns: list[str]
    bars_shown: bool


@dataclass
class FakeHub:
    cache: Path
    repos: dict[str, Path] = field(default_factory=dict)
    downloads: list[Download] = field(default_factory=list)

    def add(self, repo: str, folder: Path) -> None:
        self.repos[repo] = folder

    def listing(self, repo: str) -> list[str]:
        if repo not in self.repos:
            raise OSError(f"404: no repository {repo} on the fake hub")
        folder = self.repos[repo]
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    def snapshot_download(self, repo_id: str, allow_patterns: list[str] | None = None,
                          **_: Any) -> str:
        from huggingface_hub.utils import are_progress_bars_disabled

        patterns = list(allow_patterns or ["*"])
        self.downloads.append(Download(repo_id, patterns, not are_progress_bars_disabled()))
        repo_cache = self.repo_cache(repo_id)
        snapshot = repo_cache / "snapshots" / COMMIT
        for name in self.listing(repo_id):
            if any(fnmatch.fnmatch(name, pattern) for pattern in patterns):
                (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.repos[repo_id] / name, snapshot / name)
        (repo_cache / "refs").mkdir(parents=True, exist_ok=True)
        (repo_cache / "refs" / "main").write_text(COMMIT)
        return str(snapshot)

    def repo_cache(self, repo: str) -> Path:
        return self.cache / f"models--{repo.replace('/', '--')}"

    def cached(self, repo: str) -> list[str]:
        """The files of ``repo`` in the cache's snapshot."""
        snapshot = self.repo_cache(repo) / "snapshots" / COMMIT
        return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*")
                      if p.is_file())

    def seed_cache(self, repo: str, names: list[str]) -> None:
        """Put only ``names`` of ``repo`` in the cache: what an interrupted download left."""
        self.snapshot_download(repo, names)
        self.downloads.pop()


def install(monkeypatch: pytest.MonkeyPatch, cache: Path) -> FakeHub:
    """A ``FakeHub`` in place of the hub client's listing and download, and ``cache`` as
    the Hugging Face cache of this process (and of the processes ``pull`` starts)."""
    import huggingface_hub
    from huggingface_hub import constants

    hub = FakeHub(cache)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files",
                        lambda self, repo_id, **_: hub.listing(repo_id))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    return hub
