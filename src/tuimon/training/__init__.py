"""The built-in, config-driven trainer and the builders it uses."""
