"""tuimon inside the frameworks that own the training loop.

`tuimon.integrations.lightning`, `.transformers` and `.accelerate` each import their
framework, so import the one you use; this package itself imports none of them.
"""
