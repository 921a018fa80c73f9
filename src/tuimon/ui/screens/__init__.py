"""Modal screens: help, questions, the LR prompt, and long text (traceback, output)."""
