"""Training: the two-stage GraFT recipe (`run_training`), in-place finetuning (`finetune`), the lr schedule."""
from graft_edge.train.finetune import finetune
from graft_edge.train.runner import TrainResult, run_training
from graft_edge.train.schedule import build_scheduler, lr_factor

__all__ = ["TrainResult", "build_scheduler", "finetune", "lr_factor", "run_training"]
