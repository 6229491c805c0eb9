"""GraFT model: backbone, fusion variants, BNNeck head."""
from graft_edge.model.graft import GraFT, GraftOutput, build_model, count_params, embedding_params

__all__ = ["GraFT", "GraftOutput", "build_model", "count_params", "embedding_params"]
