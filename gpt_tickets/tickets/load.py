"""Load a ticket (a local folder or a Hub repo) as a transformers model with its masks attached and checked.

Attached masks (``sparsity.apply.attach_masks``) re-zero the pruned weights after every ``optimizer.step()`` of any
torch optimizer that updates the model, so fine-tuning a loaded ticket with a plain loop, accelerate or the HF
``Trainer`` keeps it exactly as sparse as it was: the complaint users raise about one-shot pruners, whose zeros fill
in on the first step.

Before any model is allocated, the folder gets every check of ``checks.check_ticket_folder``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.initialization import no_init_weights

from ..errors import TicketError, first_line
from ..sparsity.apply import MaskedParameters, attach_masks
from ..sparsity.masks import Mask
from .checks import check_ticket, check_ticket_folder, model_config
from .encoding import load_compact
from .format import COMPACT_FILE, TicketConfig
from .hub import download_ticket


@dataclass
class TicketInfo:
    """What ``load_ticket`` attaches to the model as ``model.ticket``."""

    folder: Path
    config: TicketConfig
    mask: Mask
    masked: MaskedParameters


def ticket_folder(repo_id_or_path: str | Path, revision: str | None = None, **download_kwargs: Any) -> Path:
    """A local ticket folder as is; a Hub repo downloaded to (or found in) the Hub cache (see ``download_ticket``)."""
    path = Path(repo_id_or_path).expanduser()
    if path.is_dir():
        return path
    try:
        validate_repo_id(str(repo_id_or_path))
    except HFValidationError:
        raise TicketError(f"{str(repo_id_or_path)!r} is neither a ticket folder nor a Hub repo id (org/name)") from None
    return download_ticket(str(repo_id_or_path), revision, **download_kwargs)


def _load_weights(folder: Path, tcfg: TicketConfig, mask: Mask) -> PreTrainedModel:
    """The dense weights through plain ``from_pretrained`` (safetensors only, no remote code), or the compact file.

    Call after ``check_ticket_folder``: it has matched the files' tensors with config.json, so nothing is left
    randomly initialised.
    """
    if tcfg.weights_format in ("dense", "both"):
        try:
            return AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
        except Exception as err:  # transformers raises OSError, ValueError ... for a bad folder
            raise TicketError(f"{folder} does not load as a transformers causal LM: {first_line(err)}") from None
    tensors = load_compact(folder / COMPACT_FILE, mask)
    with no_init_weights():  # every parameter is overwritten below (checked), so random init is wasted time
        model = AutoModelForCausalLM.from_config(model_config(folder), trust_remote_code=False)
    # assign=True takes the tensors as they are (dtype included) instead of copying them into fresh parameters;
    # what the file lacks are the tied aliases, which tie_weights points back at their tensor.
    model.load_state_dict(tensors, strict=False, assign=True)
    model.tie_weights()
    return model.eval()


def load_ticket(repo_id_or_path: str | Path, revision: str | None = None, **download_kwargs: Any) -> PreTrainedModel:
    """A ticket as a transformers causal LM with its masks attached (see :func:`attach_masks`) and checked.

    Args:
        repo_id_or_path: a ticket folder, or a Hub repo id downloaded into the Hub cache like ``from_pretrained``
            does (with ``HF_HUB_OFFLINE=1`` the cached snapshot is used).
        revision: branch, tag or commit of a Hub repo.
        download_kwargs: ``cache_dir``, ``token``, ``local_files_only``, ``endpoint``, as for
            ``huggingface_hub.snapshot_download``, and ``timeout`` (seconds any one network step may wait).

    The model's ``ticket`` attribute holds the folder, ``ticket_config.json`` (a ``TicketConfig``) and the masks. Raises
    :class:`TicketError` with one line naming the file and the problem when anything does not check out.
    """
    folder = ticket_folder(repo_id_or_path, revision, **download_kwargs)
    tcfg, mask = check_ticket_folder(folder)
    model = _load_weights(folder, tcfg, mask)
    check_ticket(model, mask)
    model.ticket = TicketInfo(folder, tcfg, mask, attach_masks(model, mask))
    return model


def load_ticket_tokenizer(
    repo_id_or_path: str | Path, revision: str | None = None, **download_kwargs: Any
) -> PreTrainedTokenizerBase:
    """The ticket's tokenizer, read from the same folder or cached snapshot as :func:`load_ticket`.

    Reading it from the snapshot rather than by repo id also avoids ``AutoTokenizer``'s probing of optional files,
    which some Hub mirrors answer with 401 instead of 404.
    """
    return AutoTokenizer.from_pretrained(ticket_folder(repo_id_or_path, revision, **download_kwargs))
