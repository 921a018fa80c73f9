"""Names the monitor gives to things that have none of their own."""

# The layer of a parameter the optimizer holds but the model does not.
NOT_IN_MODEL = "(not in model)"
