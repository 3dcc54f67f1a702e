# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Shared test setup: offline Hugging Face Hub, no telemetry, seeded RNGs. Everything runs on CPU."""

import os
import random
import shutil
from concurrent.futures import Future
from pathlib import Path

# Set before anything imports huggingface_hub, which reads them once, at its first import (a fixture is too late).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl  # noqa: E402
from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS  # noqa: E402
from huggingface_hub.utils import filter_repo_objects  # noqa: E402


def pytest_configure(config):
    import torch

    # The test models are tiny: intra-op threads only add contention (on a shared 2-core machine a tiny forward took
    # 285 ms with 2 threads and 9 ms with 1).
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _offline_and_seeded(monkeypatch):
    """Every test runs offline, without telemetry, and from the same seeds (Python, NumPy, torch)."""
    import numpy as np
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


# ------------------------------------------------------------------------------------------ Hub stand-in
class FakeHub:
    """Repositories are folders `<root>/<repo_id>/<revision>`; every call is recorded in `calls` as (name, kwargs)."""

    def __init__(self, root: Path):
        self.root = root
        self.calls: list[tuple[str, dict]] = []
        self.downloads = 0

    def folder(self, repo_id: str, revision: str | None = None) -> Path:
        return self.root / "repos" / repo_id / (revision or "main")

    def files(self, repo_id: str, revision: str | None = None) -> set[str]:
        folder = self.folder(repo_id, revision)
        return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}

    def named(self, name: str) -> list[dict]:
        return [kwargs for call, kwargs in self.calls if call == name]

    # ------------------------------------------------------------------------------------- HfApi stand-ins
    def create_repo(self, api, repo_id, *, token=None, private=None, exist_ok=False, **kwargs):
        repo_id = repo_id if "/" in repo_id else f"fake-user/{repo_id}"
        self.calls.append(("create_repo", dict(repo_id=repo_id, token=token or api.token, private=private)))
        main = self.folder(repo_id)
        if main.exists() and not exist_ok:
            raise FileExistsError(repo_id)
        main.mkdir(parents=True, exist_ok=True)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, api, repo_id, *, branch, token=None, exist_ok=False, **kwargs):
        self.calls.append(("create_branch", dict(repo_id=repo_id, branch=branch, token=token or api.token)))
        target = self.folder(repo_id, branch)
        if not target.exists():
            shutil.copytree(self.folder(repo_id), target)  # a new branch starts at the head of main

    def upload_folder(
        self,
        api,
        *,
        repo_id,
        folder_path,
        path_in_repo=None,
        commit_message=None,
        token=None,
        revision=None,
        allow_patterns=None,
        ignore_patterns=None,
        run_as_future=False,
        **kwargs,
    ):
        target = self.folder(repo_id, revision)
        if not target.exists():  # the Hub refuses a commit to a missing repository or branch
            raise FileNotFoundError(f"{repo_id}@{revision or 'main'} does not exist")
        ignore = list(ignore_patterns or []) + DEFAULT_IGNORE_PATTERNS  # what upload_folder adds
        # huggingface_hub's own selection of the files to upload (which also validates README.md's metadata).
        additions = api._prepare_upload_folder_additions(
            folder_path, path_in_repo or "", allow_patterns=allow_patterns, ignore_patterns=ignore
        )
        uploaded = sorted(op.path_in_repo for op in additions)
        for op in additions:
            (target / op.path_in_repo).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(op.path_or_fileobj, target / op.path_in_repo)
        self.calls.append(
            (
                "upload_folder",
                dict(
                    repo_id=repo_id,
                    revision=revision,
                    token=token or api.token,
                    commit_message=commit_message,
                    allow_patterns=allow_patterns,
                    ignore_patterns=ignore_patterns,
                    files=uploaded,
                ),
            )
        )
        n = len(self.named("upload_folder"))
        info = CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{n:040x}",
            commit_message=commit_message or "",
            commit_description="",
            oid=f"{n:040x}",
        )
        if run_as_future:
            future = Future()
            future.set_result(info)
            return future
        return info

    def snapshot_download(self, api, repo_id, *, revision=None, allow_patterns=None, ignore_patterns=None, **kwargs):
        source = self.folder(repo_id, revision)
        token = kwargs.get("token") or api.token
        self.calls.append(
            (
                "snapshot_download",
                dict(repo_id=repo_id, revision=revision, token=token, allow_patterns=allow_patterns),
            )
        )
        if not source.exists():
            raise FileNotFoundError(f"{repo_id}@{revision or 'main'} does not exist")
        self.downloads += 1
        snapshot = self.root / "cache" / f"{self.downloads}"
        for name in filter_repo_objects(
            sorted(self.files(repo_id, revision)), allow_patterns=allow_patterns, ignore_patterns=ignore_patterns
        ):
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / name, snapshot / name)
        return str(snapshot)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    fake = FakeHub(tmp_path / "hub")

    def method(name):
        def call(api, *args, **kwargs):
            return getattr(fake, name)(api, *args, **kwargs)

        return call

    for name in ("create_repo", "create_branch", "upload_folder", "snapshot_download"):
        monkeypatch.setattr(HfApi, name, method(name))
    # README.md's metadata is validated by the Hub; here it must at least parse as a model card.
    monkeypatch.setattr(HfApi, "_validate_yaml", lambda api, content, **kwargs: ModelCard(content))
    return fake
