"""Downloads through a real Hub-protocol server (olah over local git repos), from an empty cache and back offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError
from safetensors.torch import load_file, save_file

from tests.local_hub import LocalHub, local_hub_fixture, publish, use_hub  # noqa: F401  (the local_hub fixture)

REPO = "org/tiny"


def _make_model(folder: Path, version: int, extra: bool = False) -> Path:
    folder.mkdir(parents=True)
    save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3) * version}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny", "version": version}))
    if extra:
        (folder / "notes" / "extra.txt").parent.mkdir()
        (folder / "notes" / "extra.txt").write_text("only in the second revision\n")
    return folder


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_snapshot_download_from_empty_cache_then_offline(
    local_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _make_model(tmp_path / "src", version=1)
    sha = publish(source, local_hub.repos_root, REPO)
    cache = tmp_path / "hf-cache"
    assert not cache.exists()

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest turns the client offline at import
    snapshot = Path(snapshot_download(REPO, endpoint=local_hub.endpoint, cache_dir=cache))

    assert snapshot.name == sha
    assert _files(snapshot) == _files(source)
    assert torch.equal(load_file(snapshot / "model.safetensors")["w"], load_file(source / "model.safetensors")["w"])

    local_hub.stop()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for kwargs in ({"revision": sha}, {"revision": "main"}, {"local_files_only": True}):
        assert Path(snapshot_download(REPO, cache_dir=cache, **kwargs)) == snapshot


def test_download_specific_revision(local_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _make_model(tmp_path / "v1", version=1)
    second = _make_model(tmp_path / "v2", version=2, extra=True)
    sha1 = publish(first, local_hub.repos_root, REPO)
    sha2 = publish(second, local_hub.repos_root, REPO)
    assert sha1 != sha2
    use_hub(monkeypatch, local_hub.endpoint)  # no endpoint= below: the patched constants route everything
    cache = tmp_path / "hf-cache"

    old = Path(snapshot_download(REPO, revision=sha1, cache_dir=cache))
    assert old.name == sha1 and _files(old) == _files(first)
    latest = Path(snapshot_download(REPO, cache_dir=cache))
    assert latest.name == sha2 and _files(latest) == _files(second)
    config = hf_hub_download(REPO, "config.json", revision=sha1, cache_dir=tmp_path / "other-cache")
    assert json.loads(Path(config).read_text())["version"] == 1


def test_missing_files_and_repos(local_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pins olah's answers: 404 for a missing file only when asked by commit sha, 401 (repo not found) otherwise."""
    sha = publish(_make_model(tmp_path / "src", version=1), local_hub.repos_root, REPO)
    use_hub(monkeypatch, local_hub.endpoint)
    cache = tmp_path / "hf-cache"

    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "tokenizer.json", revision=sha, cache_dir=cache)
    with pytest.raises(RepositoryNotFoundError):  # the real Hub says 404 EntryNotFound here
        hf_hub_download(REPO, "tokenizer.json", revision="main", cache_dir=cache)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("org/absent", cache_dir=cache)
