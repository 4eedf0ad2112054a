"""The Hub path for real: download through a Hub-protocol server (olah on 127.0.0.1) from an empty cache, then
offline from the cache; the push tested at the HfApi boundary and round-tripped through that server."""

import shutil
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx2  # huggingface_hub's HTTP client, whose Response its errors carry
import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import filter_repo_objects
from transformers import AutoModelForCausalLM, AutoTokenizer

from gpt_tickets.cli import main
from gpt_tickets.errors import TicketError
from gpt_tickets.sparsity.apply import detach_masks
from gpt_tickets.tickets import hub as hub_module
from gpt_tickets.tickets import push as push_module
from gpt_tickets.tickets.load import load_ticket, load_ticket_tokenizer
from tests.conftest import MICRO
from tests.local_hub import LocalHub, local_hub_fixture, publish, use_hub  # noqa: F401  (the local_hub fixture)

SECRET = "hf_secret_token_never_printed"


def loaded(source, **kwargs):
    model = load_ticket(source, **kwargs)
    detach_masks(model)
    return model


def assert_same_ticket(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.ticket.mask.keys() == b.ticket.mask.keys()
    assert all(torch.equal(a.ticket.mask[n], b.ticket.mask[n]) for n in a.ticket.mask)


def test_load_ticket_downloads_from_an_empty_cache_then_works_offline(micro_run, local_hub, tmp_path, monkeypatch):
    sha = publish(micro_run / "ticket", local_hub.repos_root, "org/ticket")
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    local = loaded(micro_run / "ticket")

    remote = loaded("org/ticket", cache_dir=cache, endpoint=local_hub.endpoint)
    assert_same_ticket(remote, local)
    assert remote.ticket.folder.is_relative_to(cache)
    by_sha = loaded("org/ticket", revision=sha, cache_dir=cache, endpoint=local_hub.endpoint)
    assert_same_ticket(by_sha, local)
    # olah answers 401 for optional files AutoTokenizer probes at a branch; the ticket's tokenizer comes from the
    # downloaded snapshot instead, and matches the local one.
    tokenizer = load_ticket_tokenizer("org/ticket", cache_dir=cache, endpoint=local_hub.endpoint)
    text = "def lottery(ticket): return ticket"
    assert tokenizer(text).input_ids == AutoTokenizer.from_pretrained(micro_run / "ticket")(text).input_ids

    use_hub(monkeypatch, local_hub.endpoint)  # the plain transformers way, from the same server
    plain = AutoModelForCausalLM.from_pretrained("org/ticket", revision=sha, cache_dir=tmp_path / "plain-cache")
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in local.state_dict().items())

    local_hub.stop()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert_same_ticket(loaded("org/ticket", cache_dir=cache), local)  # from the cache, like from_pretrained


def test_download_fetches_no_pickles_and_no_code(micro_run, local_hub, tmp_path, monkeypatch):
    repo = Path(shutil.copytree(micro_run / "ticket", tmp_path / "repo"))
    (repo / "pytorch_model.bin").write_bytes(b"a pickle would run code on torch.load")
    (repo / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    publish(repo, local_hub.repos_root, "org/mixed")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    model = loaded("org/mixed", cache_dir=tmp_path / "cache", endpoint=local_hub.endpoint)
    files = {p.name for p in model.ticket.folder.iterdir()}
    assert "model.safetensors" in files and "ticket_masks.safetensors" in files
    assert "pytorch_model.bin" not in files and "modeling_evil.py" not in files


class FakeHfApi:
    """HfApi at the boundary: records the calls; an upload lands in the local Hub (the files it would send)."""

    def __init__(self, hub: LocalHub, calls: list) -> None:
        self.hub, self.calls = hub, calls

    def __call__(self, endpoint=None, token=None):
        self.calls.append(("HfApi", token))
        self.endpoint = endpoint or "https://huggingface.co"
        return self

    def whoami(self):
        self.calls.append(("whoami",))
        return {"name": "org"}

    def create_repo(self, repo_id, private=False, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private, exist_ok))

    def create_branch(self, repo_id, branch, exist_ok=False):
        self.calls.append(("create_branch", repo_id, branch))

    def upload_folder(self, *, repo_id, folder_path, revision, create_pr, commit_message, allow_patterns):
        self.calls.append(("upload_folder", repo_id, Path(folder_path), revision, create_pr, commit_message))
        staged = Path(self.hub.workdir) / "staged" / repo_id
        shutil.rmtree(staged, ignore_errors=True)
        files = [p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()]
        for name in filter_repo_objects(files, allow_patterns=allow_patterns):
            (staged / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(folder_path) / name, staged / name)
        sha = publish(staged, self.hub.repos_root, repo_id, message=commit_message)
        return SimpleNamespace(commit_url=f"{self.hub.endpoint}/{repo_id}/commit/{sha}", pr_url=None)


@pytest.fixture
def fake_api(local_hub, monkeypatch):
    calls = []
    monkeypatch.setattr(push_module, "HfApi", FakeHfApi(local_hub, calls))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    return calls


def test_cli_push_is_one_checked_commit_that_round_trips(micro_run, local_hub, fake_api, tmp_path, capsys):
    ticket = micro_run / "ticket"
    args = ["push", str(ticket), "--repo-id", "org/pushed", "--private", "--revision", "dev", "--create-pr"]
    assert main(args) == 0
    assert [c[0] for c in fake_api] == ["HfApi", "whoami", "create_repo", "create_branch", "upload_folder"]
    assert fake_api[0] == ("HfApi", SECRET)
    assert fake_api[2] == ("create_repo", "org/pushed", True, True)
    (_, repo_id, folder, revision, create_pr, message) = fake_api[-1]
    assert (repo_id, folder, revision, create_pr) == ("org/pushed", ticket, "dev", True)
    assert "75.0% sparse" in message
    out = capsys.readouterr()
    assert "org/pushed/commit/" in out.out and SECRET not in out.out + out.err

    pulled = loaded("org/pushed", cache_dir=tmp_path / "cache", endpoint=local_hub.endpoint)
    assert_same_ticket(pulled, loaded(ticket))


def test_run_with_push_to_hub_pushes_its_ticket_at_the_end(local_hub, fake_api, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["find", *MICRO, "--output_dir", str(run), "--export.push_to_hub", "org/from-run"]) == 0
    assert [c[0] for c in fake_api].count("upload_folder") == 1
    assert fake_api[-1][1:3] == ("org/from-run", run / "ticket")
    assert "pushed the ticket to" in capsys.readouterr().out
    assert_same_ticket(
        loaded("org/from-run", cache_dir=tmp_path / "cache", endpoint=local_hub.endpoint), loaded(run / "ticket")
    )


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))


def test_push_without_a_token_stops_before_any_work(micro_run, no_token, monkeypatch, capsys):
    monkeypatch.setattr(push_module, "HfApi", lambda *a, **k: pytest.fail("HfApi must not be built without a token"))
    monkeypatch.setattr(push_module, "load_ticket", lambda *a, **k: pytest.fail("no checks before the token"))
    assert main(["push", str(micro_run / "ticket"), "--repo-id", "org/name"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "gpt-tickets: error: no Hugging Face token found: run `hf auth login` or set HF_TOKEN (nothing was uploaded)"
    )


def test_run_with_push_to_hub_and_no_token_fails_before_writing(no_token, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["find", *MICRO, "--output_dir", str(run), "--export.push_to_hub", "org/name"]) == 2
    assert "no Hugging Face token found" in capsys.readouterr().err
    assert not run.exists()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_push_without_network_is_one_line_without_the_token(micro_run, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    use_hub(monkeypatch, endpoint)
    assert main(["push", str(micro_run / "ticket"), "--repo-id", "org/name"]) == 2
    out = capsys.readouterr()
    err = out.err.strip()
    assert err.startswith(f"gpt-tickets: error: cannot reach the Hub at {endpoint}") and "\n" not in err
    assert SECRET not in out.out + out.err


def test_push_with_a_rejected_token(micro_run, monkeypatch):
    class Rejecting(FakeHfApi):
        def whoami(self):
            response = httpx2.Response(401, request=httpx2.Request("GET", "https://huggingface.co/api/whoami-v2"))
            raise HfHubHTTPError("401 Client Error: Unauthorized", response=response)

    monkeypatch.setattr(push_module, "HfApi", Rejecting(None, []))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(push_module.TicketError, match=r"rejected the token \(401\); nothing was pushed"):
        push_module.push_ticket(micro_run / "ticket", "org/name", token=SECRET)


def test_push_in_offline_mode_says_so(micro_run, monkeypatch):
    monkeypatch.setattr(push_module, "HfApi", lambda *a, **k: pytest.fail("no Hub calls offline"))
    with pytest.raises(push_module.TicketError, match="HF_HUB_OFFLINE is set"):
        push_module.push_ticket(micro_run / "ticket", "org/name", token=SECRET)


@pytest.fixture
def silent_hub():
    """The endpoint of a TCP server on 127.0.0.1 that accepts connections and never answers (nor closes them)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:  # the server socket was closed: the test is over
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.shutdown(socket.SHUT_RDWR)
    server.close()
    thread.join(timeout=5)
    for connection in held:
        connection.close()


def test_push_to_a_silent_hub_ends_with_one_line_within_the_timeout(micro_run, silent_hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    use_hub(monkeypatch, silent_hub)
    monkeypatch.setattr(hub_module, "HUB_TIMEOUT_S", 1.0)
    loaded(micro_run / "ticket")  # warm: what is timed below is the push, not the first model load
    capsys.readouterr()
    start = time.perf_counter()
    assert main(["push", str(micro_run / "ticket"), "--repo-id", "org/name"]) == 2
    took = time.perf_counter() - start
    out = capsys.readouterr()
    err = out.err.strip()
    assert err == f"gpt-tickets: error: the Hub at {silent_hub} did not answer within 1 s; no commit was confirmed"
    assert 1.0 <= took < 5.0 and SECRET not in out.out + out.err


def test_download_from_a_silent_hub_ends_with_one_line_within_the_timeout(silent_hub, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.perf_counter()
    with pytest.raises(TicketError) as err:
        load_ticket("org/ticket", cache_dir=tmp_path / "cache", endpoint=silent_hub, timeout=0.5)
    took = time.perf_counter() - start
    assert (
        str(err.value)
        == f"cannot download the ticket 'org/ticket': the Hub at {silent_hub} did not answer within 0.5 s"
    )
    assert 0.5 <= took < 3.0
