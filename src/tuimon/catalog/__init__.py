"""Every run on the machine: finding run directories under roots, summarizing each run from
the head and tail of its log (never the whole log), following them as they grow, the
machine's GPUs and which run uses which, and `tuimon ls`. No Textual, no torch."""
