"""The rules, one module per family; `ALL_RULES` is the order they are evaluated in (the
more specific first, so they can suppress the general ones)."""
