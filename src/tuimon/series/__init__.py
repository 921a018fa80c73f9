"""Pure series math shared by the console, the UI and the rules."""
