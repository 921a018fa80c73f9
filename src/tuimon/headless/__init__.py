"""The headless front end: progress lines on stdout. Never imports Textual."""
