"""The folded plan (plan types, BN folding, casting) and the per-model cache of
what the backends prepare from it.

    reference model --build_plan--> Plan --(backend prepares)--> packed program / kernel plan
                                      \\______ cached in PlanCache, per kind, with its own bound
"""
from .cache import PlanCache
from .fold_bn import bn_affine, fold_bn
from .folded import (BlockPlan, ConvStep, DwStep, LastStagePlan, Plan, SeStep, UnsupportedModule, act_name,
                     build_plan, cast_plan, check_supported, se_step, step_like)

__all__ = ["PlanCache", "bn_affine", "fold_bn", "BlockPlan", "ConvStep", "DwStep", "LastStagePlan", "Plan", "SeStep",
           "UnsupportedModule", "act_name", "build_plan", "cast_plan", "check_supported", "se_step", "step_like"]
