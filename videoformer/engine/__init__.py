"""Training and evaluation engine: config, training loop, multi-view evaluation, checkpoints, DDP, schedules."""
from .config import Config, ConfigError, load_config
from .evaluate import EvalResult, evaluate
from .train import TrainingDiverged, train

__all__ = ["Config", "ConfigError", "EvalResult", "TrainingDiverged", "evaluate", "load_config", "train"]
