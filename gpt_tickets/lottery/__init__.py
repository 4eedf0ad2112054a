"""The lottery: rounds of IMP with rewinding, and branches on finished rounds; the only layer with an Accelerator."""

from .branches import run_branch
from .imp import find_ticket
from .results import BranchResult, RoundResult, RunResults
from .run_dir import RunDir

__all__ = ["BranchResult", "RoundResult", "RunDir", "RunResults", "find_ticket", "run_branch"]
