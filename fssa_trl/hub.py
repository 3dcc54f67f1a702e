# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The Hugging Face Hub: download a steerable model's folder, upload a folder.

Only safe formats travel either way: JSON configs, safetensors weights, the tokenizer's text files and README.md.
Pickled files (`.bin`, `.pt`, `.pkl`, ...) are never requested from the Hub nor uploaded by these functions.
"""

from __future__ import annotations

import os
import warnings

from huggingface_hub import CommitInfo, HfApi
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.utils import HFValidationError, filter_repo_objects, validate_repo_id

from .version import __version__

# What a steerable model's folder holds (`fssa_config.json`, `fssa_np.safetensors`, the PEFT adapter, the tokenizer,
# the card) and nothing that is unpickled on load. `*.model` is a sentencepiece protobuf, `*.txt` BPE merges or
# WordPiece vocabularies, `*.jinja` a chat template.
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.md", "*.txt", "*.model", "*.jinja"]
# Checkpoints pushed beside the model (`hub_strategy="checkpoint"` or `"all_checkpoints"`) are not the model.
HUB_IGNORE_PATTERNS = ["last-checkpoint/*", "checkpoint-*/*"]


def hub_api(token: str | None = None) -> HfApi:
    """An [`~huggingface_hub.HfApi`] that reports fssa_trl as the library, with `token` (or the saved login)."""
    return HfApi(token=token, library_name="fssa_trl", library_version=__version__)


def resolve_pretrained(path_or_repo_id: str, revision: str | None = None, token: str | None = None) -> str:
    """The local folder of `path_or_repo_id`: itself if it is a folder, else a snapshot of that Hub repository at
    `revision` (default branch when `None`), restricted to [`HUB_ALLOW_PATTERNS`].

    Raises:
        ValueError: `path_or_repo_id` is neither a folder nor a valid repository id, or `revision` is given with a
            folder (a folder has one version).
        FileNotFoundError: no folder and no repository of that name (or, offline, none in the cache).
    """
    path_or_repo_id = os.fspath(path_or_repo_id)
    if os.path.isdir(path_or_repo_id):
        if revision is not None:
            raise ValueError(
                f"`revision={revision!r}` selects a version of a Hub repository, but {path_or_repo_id!r} is a local "
                "folder: drop `revision`, or rename the folder to load the repository of that name."
            )
        return path_or_repo_id
    try:
        validate_repo_id(path_or_repo_id)
    except HFValidationError as error:
        raise ValueError(
            f"{path_or_repo_id!r} is neither a local folder nor a Hub repository id ('<namespace>/<name>'): {error}"
        ) from error
    try:
        return hub_api(token).snapshot_download(
            repo_id=path_or_repo_id,
            revision=revision,
            allow_patterns=HUB_ALLOW_PATTERNS,
            ignore_patterns=HUB_IGNORE_PATTERNS,
        )
    except (RepositoryNotFoundError, LocalEntryNotFoundError) as error:  # a mistyped folder reads as a repo id
        raise FileNotFoundError(
            f"{path_or_repo_id!r} is not a local folder, and no Hub repository of that name could be found or read "
            f"from the cache: {error}"
        ) from error


def push_folder_to_hub(
    folder: str,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
) -> CommitInfo:
    """Upload the safe files of `folder` ([`HUB_ALLOW_PATTERNS`]) to the model repository `repo_id` in one commit,
    creating the repository (and the branch `revision`) if needed. Used by `SteerableModel.push_to_hub` and for the
    per-user artifacts that `export` writes.

    Args:
        folder (`str`): the folder to upload (its subfolders too, except checkpoints).
        repo_id (`str`): `"<namespace>/<name>"`, or `"<name>"` in the namespace of the token.
        private (`bool`, *optional*): whether a new repository is private (the Hub's default when `None`); an
            existing repository keeps its visibility.
        token (`str`, *optional*): a token with write access (default: the saved login or `HF_TOKEN`).
        revision (`str`, *optional*): the branch to commit to, created from the default branch if missing.
        commit_message (`str`, *optional*): the commit message.

    Returns:
        [`~huggingface_hub.CommitInfo`]: the commit.
    """
    if not os.path.isdir(folder):
        raise ValueError(f"{folder!r} is not a folder: nothing to upload.")
    skipped = _skipped_files(folder)
    if skipped:
        warnings.warn(
            f"Not uploaded from {folder!r}, as only safetensors, JSON, tokenizer files and README.md are: {skipped}. "
            "If the model needs one of them, save it as safetensors or JSON instead.",
            stacklevel=2,
        )
    api = hub_api(token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None and not revision.startswith("refs/pr/"):  # as transformers' `push_to_hub` does
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message or "Upload steerable model with fssa_trl",
        revision=revision,
        allow_patterns=HUB_ALLOW_PATTERNS,
        ignore_patterns=list(HUB_IGNORE_PATTERNS),
    )


def _skipped_files(folder: str) -> list[str]:
    """The files of `folder` (checkpoints aside) that [`HUB_ALLOW_PATTERNS`] leaves out of an upload."""
    files = []
    for root, _, names in os.walk(folder):
        files += [os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/") for name in names]
    kept = set(filter_repo_objects(files, allow_patterns=HUB_ALLOW_PATTERNS))
    ignored = set(filter_repo_objects(files, allow_patterns=HUB_IGNORE_PATTERNS))
    return sorted(set(files) - kept - ignored)
