"""`tuimon export`: a run's scalars for other tools (CSV, TensorBoard), read from its log
as a stream, so a log of any length exports in bounded memory. No torch, no Textual."""
