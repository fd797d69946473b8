"""Generators over tokenizer tokens and the generation stage (issue 7).

Importing this package registers the built-in generators in
``harness_core.registry.GENERATORS``: ``"sit"`` (:class:`~harness.generation.sit.SiT`,
continuous latents) and ``"ar"`` (:class:`~harness.generation.ar.ARTransformer`,
discrete indices). The stage entry point is
:func:`harness.generation.stage.run_generation_stage`.
"""
from harness.generation import ar, sit  # noqa: F401  (registers "ar" and "sit")

__all__ = ["run_generation_stage"]


def __getattr__(name: str):
    if name == "run_generation_stage":
        from harness.generation.stage import run_generation_stage

        return run_generation_stage
    raise AttributeError(name)
