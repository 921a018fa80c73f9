"""Notifications: a message to a webhook or a command when a run needs a person.

An error alert, the run's end (failed, completed; stopped when asked for) and a hang (no
step for `hang_after` seconds while the run is running) each make one message. The
training thread never waits on one: they are queued and sent by a thread of their own.
"""
