"""A torchrun job seen as one run: which rank this is, torchrun's store, commands applied
by every rank at one agreed step, and every rank's reports collected on rank 0.

Built on what torchrun already gives a job (its environment and its TCPStore); nothing
here launches processes or opens a transport of its own.
"""
