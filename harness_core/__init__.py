"""The core every package of the harness imports, and that imports none of them: the tokenizer contract
(:mod:`harness_core.api`), the registries (:mod:`harness_core.registry`), atomic file writes
(:mod:`harness_core.io`), the errors that end a run with one line (:mod:`harness_core.errors`) and the seeding
scheme (:mod:`harness_core.seeding`); and the transformer and convolution blocks that tokenizers and generators
share (:mod:`harness_core.layers`).

Packages import one way: ``harness_core`` <- ``metrics`` <- ``video_tokenizers`` <- ``harness`` (``harness``
imports all three; ``video_tokenizers`` imports ``metrics`` for its perceptual losses; nothing imports
``harness`` back). The registries load the built-in families by module name at first lookup, so the core names
no package it does not import.
"""
