"""Downloading a ticket repo into the Hub cache, the way ``from_pretrained`` does, and nothing that could run."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, HTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

from ..errors import TicketError, first_line

# What a ticket consists of: weights and masks as safetensors, configs and tokenizer files as text. No pickles
# (*.bin, *.pt) and no code (*.py) are downloaded or uploaded, whatever else a repo holds.
TICKET_FILE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "README.md"]


def download_ticket(
    repo_id: str,
    revision: str | None = None,
    *,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    endpoint: str | None = None,
) -> Path:
    """The ticket's files in the Hub cache (downloaded once; with HF_HUB_OFFLINE=1 the cached snapshot)."""
    try:
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
        raise TicketError(f"cannot download the ticket {repo_id!r}{at}: {first_line(err)}") from None
