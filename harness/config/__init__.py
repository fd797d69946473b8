"""The suite configuration: schema (:mod:`.schema`), reading and ``--set`` (:mod:`.load`), one-line errors
(:mod:`.errors`) and the checks against the registries (:mod:`.validate`).

Re-exported here: the names most of the code imports. Everything else is imported from its module.
"""
from harness.config.errors import SuiteError
from harness.config.load import load_suite
from harness.config.schema import DataConfig, EvaluateConfig, GenerationConfig, Suite, TokenizerEntry, TrainConfig

__all__ = ["DataConfig", "EvaluateConfig", "GenerationConfig", "Suite", "SuiteError", "TokenizerEntry", "TrainConfig",
           "load_suite"]
