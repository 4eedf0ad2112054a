"""A real Hub-protocol server on 127.0.0.1 for tests: olah serving local git repositories, offline.

Why: `snapshot_download` / `hf_hub_download` / `from_pretrained` can then be exercised for real (HTTP, ETags,
revisions, the cache layout) from an empty cache, without huggingface.co, which tests cannot reach.

olah serves a git repository at `<mirrors-path>/models/<org>/<name>` as the model repo `org/name`. With
`[accessibility] offline = true` it never asks the upstream Hub; `hf-netloc` points at a closed local port anyway,
so a stray upstream call fails at once instead of leaving the machine. What olah answers (0.5.4, offline):

- repo info needs a revision: `/api/models/org/name/revision/{main|sha}` is 200, bare `/api/models/org/name` is 401
  (`snapshot_download` always asks with a revision, `HfApi.model_info(repo_id)` without one fails).
- a missing repo, an unknown branch, and a missing file or folder asked for by branch name (`resolve/main/x`,
  `tree/main/x`) all answer 401 RepoNotFound, which huggingface_hub raises as `RepositoryNotFoundError`; asked for
  by full commit sha, a missing file or folder is 404 EntryNotFound (`RemoteEntryNotFoundError`), as on the Hub.
  So whatever probes optional files (transformers' `AutoTokenizer`) needs `revision=<sha>`; `publish` returns it.
- a GET (not HEAD) of a missing file is a 500; clients HEAD first, so they see the codes above.
- files are served as plain git blobs: the ETag is the git blob sha1 and no file is LFS.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

STARTUP_TIMEOUT_S = 30.0
# The upstream Hub olah must never reach: a privileged port nothing listens on, so a stray call is refused at once.
_NO_UPSTREAM = "127.0.0.1:1"

# Fixed identity and no user/system git config: commits do not depend on (or get signed by) the machine's setup.
_GIT_ENV = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "local-hub",
    "GIT_AUTHOR_EMAIL": "local-hub@localhost",
    "GIT_COMMITTER_NAME": "local-hub",
    "GIT_COMMITTER_EMAIL": "local-hub@localhost",
}


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, env={**os.environ, **_GIT_ENV}, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo}: {done.stderr.strip()}")
    return done.stdout.strip()


def repo_dir(repos_root: Path, repo_id: str) -> Path:
    """Where olah looks for the model repo `repo_id` ("org/name"; olah needs the org)."""
    org, _, name = repo_id.partition("/")
    if not org or not name or "/" in name:
        raise ValueError(f"repo_id must be 'org/name', got {repo_id!r}")
    return repos_root / "models" / org / name


def publish(folder: Path, repos_root: Path, repo_id: str, message: str = "publish") -> str:
    """Commit the files of `folder` onto `main` of the git repo olah serves as `repo_id`; return the commit sha.

    Each call replaces the whole tree, so earlier shas stay downloadable as older revisions.
    """
    repo = repo_dir(repos_root, repo_id)
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        _git(repo, "init", "-q", "-b", "main")
    for child in repo.iterdir():
        if child.name != ".git":
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    shutil.copytree(folder, repo, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
    # A fresh index: git's stat cache would otherwise keep the old blob of a file rewritten with the same size,
    # inode and (coarse-clock) mtime, and commit stale content under a new sha (seen once in CI).
    (repo / ".git" / "index").unlink(missing_ok=True)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "--allow-empty", "-m", message)
    _check_committed(repo, folder)
    return _git(repo, "rev-parse", "HEAD")


def _check_committed(repo: Path, folder: Path) -> None:
    """The commit holds exactly the folder's bytes: a stale blob would otherwise surface as a confusing download."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and ".git" not in p.parts)
    listing = _git(repo, "ls-tree", "-r", "--format=%(path) %(objectname)", "HEAD")
    committed = dict(line.rsplit(" ", 1) for line in listing.splitlines())
    blobs = _git(repo, "hash-object", "--", *(str(folder / f) for f in files)).split() if files else []
    hashed = dict(zip(files, blobs, strict=True))
    if committed != hashed:
        raise RuntimeError(f"the commit in {repo} does not hold the files of {folder}: {committed} != {hashed}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalHub:
    """olah serving the git repos under `repos_root` (see `publish`) at `endpoint`, for the `with` block's duration.

    Repos may be published before or after the server starts: olah reads them from disk on every request.
    `workdir` holds olah's config, its own download cache, and `olah.log` (the server's output).
    """

    def __init__(self, repos_root: Path, workdir: Path) -> None:
        self.repos_root = Path(repos_root)
        self.workdir = Path(workdir)
        self.log_path = self.workdir / "olah.log"
        self.endpoint = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalHub:
        self.repos_root.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        config = self.workdir / "olah.toml"
        config.write_text(self._config(port))
        # The server must not go through a proxy to its (unused) upstream; it needs nothing else from the env.
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "olah.server",
                    "--config",
                    str(config),
                    "--log-path",
                    str(self.workdir / "logs"),
                ],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_until_up(port)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Terminate the server (idempotent); after this the endpoint refuses connections."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's output, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _config(self, port: int) -> str:
        q = json.dumps  # a JSON string is a valid TOML basic string, backslashes included
        netloc = f"127.0.0.1:{port}"
        return "\n".join(
            [
                "[basic]",
                f"host = {q('127.0.0.1')}",
                f"port = {port}",
                f"repos-path = {q(str(self.workdir / 'cache'))}",
                f"mirrors-path = [{q(str(self.repos_root))}]",
                f"hf-scheme = {q('http')}",
                f"hf-netloc = {q(_NO_UPSTREAM)}",
                f"hf-lfs-netloc = {q(_NO_UPSTREAM)}",
                f"mirror-netloc = {q(netloc)}",
                f"mirror-lfs-netloc = {q(netloc)}",
                "[accessibility]",
                "offline = true",
                "",
            ]
        )

    def _wait_until_up(self, port: int) -> None:
        """Return once the server answers HTTP (any status); raise with the log tail if it exits or times out."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"olah exited with {self._proc.returncode} on start:\n{self.log_tail()}")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", "/api/models/local-hub/probe/refs")  # no such repo: answered at once (404)
                conn.getresponse().read()
                return
            except OSError:
                pass
            finally:
                conn.close()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"olah did not answer on {self.endpoint} in {STARTUP_TIMEOUT_S:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)


def use_hub(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Make huggingface_hub (and transformers through it) go online to `endpoint` for one test.

    tests/conftest.py sets HF_HUB_OFFLINE=1, and huggingface_hub copies its env into `constants` at import, so
    changing the env later does nothing. Every offline check calls `constants.is_offline_mode()`, which reads
    `constants.HF_HUB_OFFLINE` at call time, and URLs come from `constants.ENDPOINT` / the resolve template when no
    `endpoint=` is passed: patching those three attributes is enough. `snapshot_download(..., endpoint=...)` needs
    only the first.
    """
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture(name="local_hub")
def local_hub_fixture(tmp_path: Path) -> Iterator[LocalHub]:
    """A running LocalHub with an empty repos root at `tmp_path / "hub-repos"`; publish into `local_hub.repos_root`.

    Import `local_hub_fixture` into a test module or tests/conftest.py to make the `local_hub` fixture available.
    """
    with LocalHub(tmp_path / "hub-repos", tmp_path / "hub-server") as hub:
        yield hub
