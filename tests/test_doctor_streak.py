"""The one "held N looks in a row" counter the doctor's rules wait with."""

from __future__ import annotations

from tuimon.doctor.streak import Streak


def test_a_streak_reaches_its_threshold_on_the_nth_look_in_a_row():
    streak = Streak(3)
    assert [streak.hold() for _ in range(4)] == [False, False, True, True]
    assert streak.count == 4 and streak.reached


def test_one_look_where_it_does_not_hold_starts_it_over():
    streak = Streak(2)
    assert [streak.update(h) for h in (True, False, True, True)] == [False, False, False, True]
    streak.reset()
    assert streak.count == 0 and not streak.reached


def test_update_never_says_reached_on_a_look_where_it_did_not_hold():
    streak = Streak(0)  # a threshold of 0: reached at once, but not by a failing look
    assert streak.reached
    assert streak.update(False) is False
    assert streak.update(True) is True


def test_a_threshold_from_a_config_may_be_a_float():
    streak = Streak(2.5)  # `--rule stall.checks=2.5`: the third look reaches it
    assert [streak.hold() for _ in range(3)] == [False, False, True]
