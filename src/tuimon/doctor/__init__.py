"""The training doctor: rules that name what is wrong with a run."""
