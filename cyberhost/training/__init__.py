"""Training: stage LightningModules over one base class, callbacks, checkpoints, strategies."""

from cyberhost.training.module import CyberHostModule, OptimConfig, ParamGroups
from cyberhost.training.stages import Stage1Module, Stage2Module

__all__ = ["CyberHostModule", "OptimConfig", "ParamGroups", "Stage1Module", "Stage2Module"]
