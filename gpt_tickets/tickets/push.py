"""Pushing a ticket folder to the Hub: checked first, then one commit with ``HfApi.upload_folder``, every request
bounded in time (``hub.hub_timeout``)."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import CommitInfo, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HTTPError

from ..errors import TicketError, first_line
from ..quiet import library_bars_off
from ..sparsity.apply import detach_masks
from .hub import TICKET_FILE_PATTERNS, hub_timeout, no_answer, timed_out, timeout_seconds
from .load import load_ticket


def require_token(token: str | None = None) -> str:
    """The token from the argument or the usual huggingface_hub places (HF_TOKEN, ``hf auth login``)."""
    token = token or get_token()
    if not token:
        raise TicketError("no Hugging Face token found: run `hf auth login` or set HF_TOKEN (nothing was uploaded)")
    return token


def push_ticket(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    timeout: float | None = None,
) -> CommitInfo:
    """Upload a ticket folder to ``repo_id`` as one commit, after checking the token, the Hub and the folder.

    Args:
        revision: branch to commit to (created when missing); default the repo's main branch.
        create_pr: open a pull request with the commit instead of committing to the branch.
        timeout: seconds any one network step may wait (default ``hub.HUB_TIMEOUT_S``); a Hub that stays silent
            longer ends the push with one line.
    """
    token = require_token(token)
    folder = Path(folder)
    with library_bars_off():  # the check loads the model: no bar above a push's one-line answer
        checked = load_ticket(folder)  # the checks a downloader's load_ticket makes, before any upload work
    detach_masks(checked)
    if constants.HF_HUB_OFFLINE:
        raise TicketError("cannot push: HF_HUB_OFFLINE is set (unset it to reach the Hub); nothing was uploaded")
    sparse = _sparse_words(checked.ticket.config.sparsity)
    message = commit_message or f"Upload a {sparse}lottery ticket (gpt_tickets)"
    api = HfApi(endpoint=endpoint, token=token)
    seconds = timeout_seconds(timeout)
    try:
        with hub_timeout(seconds):
            return _upload(
                api, folder, repo_id, private=private, revision=revision, create_pr=create_pr, message=message
            )
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status == 401:
            raise TicketError(f"the Hub at {api.endpoint} rejected the token (401); nothing was pushed") from None
        raise TicketError(f"pushing to {repo_id!r} failed: {first_line(err)}") from None
    except (HTTPError, OSError) as err:
        if timed_out(err):
            raise TicketError(f"{no_answer(api.endpoint, seconds)}; no commit was confirmed") from None
        raise TicketError(f"cannot reach the Hub at {api.endpoint}: {first_line(err)}") from None


def _sparse_words(sparsity: dict[str, float]) -> str:
    """The commit message's '90.0% sparse ', or nothing when ticket_config.json states no overall sparsity."""
    overall = sparsity.get("overall")  # from_dict checks the entry's type, not which keys it holds
    return f"{overall:.1%} sparse " if overall is not None else ""


def _upload(
    api: HfApi, folder: Path, repo_id: str, *, private: bool, revision: str | None, create_pr: bool, message: str
) -> CommitInfo:
    """The Hub calls of a push, in order: the token, the repo, the branch, then the folder as one commit."""
    api.whoami()
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        revision=revision,
        create_pr=create_pr,
        commit_message=message,
        allow_patterns=TICKET_FILE_PATTERNS,
    )
