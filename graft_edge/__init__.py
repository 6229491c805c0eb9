"""graft-edge: GraFT multimodal ReID from training to a pruned, exported, measured edge model."""
__version__ = "0.1.0"

from graft_edge.errors import GraftError  # noqa: E402
from graft_edge.retrieval.metrics import evaluate_rank  # noqa: E402

__all__ = ["GraftError", "evaluate_rank", "__version__"]
