"""Downloading a ticket repo into the Hub cache, the way ``from_pretrained`` does, and nothing that could run.

Every Hub request made here and in ``push`` waits a bounded time (``hub_timeout``): huggingface_hub's shared HTTP
client has none, so a server that accepts connections and never answers would otherwise hold the call forever.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2  # huggingface_hub's HTTP client
from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, HTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
from huggingface_hub.utils import _http as hf_http
from huggingface_hub.utils import set_client_factory

from ..errors import TicketError, first_line

# What a ticket consists of: weights and masks as safetensors, configs and tokenizer files as text, the model card
# and its plots. No pickles (*.bin, *.pt) and no code (*.py) are downloaded or uploaded, whatever else a repo holds.
TICKET_FILE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "README.md", "plots/*.png"]

# Seconds one network step of a Hub request (connecting, one read, one write) may wait; a transfer that keeps moving
# is never cut. Generous, since a commit of many files can keep the Hub busy before it answers.
HUB_TIMEOUT_S = 60.0


def timeout_seconds(timeout: float | None) -> float:
    """The timeout to use: the caller's, else ``HUB_TIMEOUT_S`` (read now, so a test or an app can lower it)."""
    return HUB_TIMEOUT_S if timeout is None else timeout


def _cap_timeouts(seconds: float) -> Callable[[httpx2.Request], None]:
    """A request hook: every timeout of the request (none means wait forever) becomes at most ``seconds``."""

    def cap(request: httpx2.Request) -> None:
        limits = request.extensions.get("timeout") or dict.fromkeys(("connect", "read", "write", "pool"))
        capped = {step: seconds if limit is None else min(limit, seconds) for step, limit in limits.items()}
        request.extensions = {**request.extensions, "timeout": capped}

    return cap


@contextmanager
def hub_timeout(seconds: float) -> Iterator[None]:
    """Within the block no huggingface_hub request waits longer than ``seconds`` for any one network step.

    A client default is not enough: some calls pass ``timeout=None`` themselves (``repo_info`` in
    ``snapshot_download``, the ``HfApi`` calls of a push), which means no timeout. So the client the Hub calls share
    gets a request hook that caps each request's own timeouts. The client factory in place (a user's proxy or
    certificates) is wrapped, not replaced, and put back after the block; huggingface_hub has a public setter for
    it but no getter, hence the private read.
    """
    previous = hf_http._GLOBAL_CLIENT_FACTORY

    def factory() -> httpx2.Client:
        client = previous()
        hooks = client.event_hooks
        client.event_hooks = {**hooks, "request": [*hooks.get("request", []), _cap_timeouts(seconds)]}
        return client

    set_client_factory(factory)  # closes the shared client: the next request builds one through ``factory``
    try:
        yield
    finally:
        set_client_factory(previous)


def timed_out(err: BaseException) -> bool:
    """Whether a Hub error comes from a timeout; huggingface_hub re-raises some as another error, chained."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, httpx2.TimeoutException):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def no_answer(endpoint: str, seconds: float) -> str:
    return f"the Hub at {endpoint} did not answer within {seconds:g} s"


def download_ticket(
    repo_id: str,
    revision: str | None = None,
    *,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    endpoint: str | None = None,
    timeout: float | None = None,
) -> Path:
    """The ticket's files in the Hub cache (downloaded once; with HF_HUB_OFFLINE=1 the cached snapshot).

    ``timeout``: seconds any one network step may wait (default ``HUB_TIMEOUT_S``).
    """
    seconds = timeout_seconds(timeout)
    try:
        with hub_timeout(seconds):
            return Path(
                snapshot_download(
                    repo_id,
                    revision=revision,
                    cache_dir=cache_dir,
                    token=token,
                    local_files_only=local_files_only,
                    allow_patterns=TICKET_FILE_PATTERNS,
                    endpoint=endpoint,
                )
            )
    except (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, HTTPError, OSError) as err:
        at = f" at revision {revision!r}" if revision else ""
        reason = no_answer(endpoint or constants.ENDPOINT, seconds) if timed_out(err) else first_line(err)
        raise TicketError(f"cannot download the ticket {repo_id!r}{at}: {reason}") from None
