"""The pure transition function: every row of the table, and what is ignored."""

from __future__ import annotations

import itertools

import pytest

from resilientdb._states import TRANSITIONS, Action, Signal, State, transition

A, S, G = Action, State, Signal

EXPECTED = {
    (S.CONNECTING, G.CONNECT_OK): (S.CONNECTED, {A.RESET_ATTEMPTS, A.WAKE_WAITERS}),
    (S.CONNECTING, G.CONNECT_TRANSIENT): (S.RECONNECTING, {A.RETRY}),
    (S.CONNECTING, G.CONNECT_PERMANENT): (S.FAILED, {A.WAKE_WAITERS, A.SLOW_PROBE}),
    (S.CONNECTED, G.CONNECTION_LOST): (S.RECONNECTING, {A.RETRY}),
    (S.RECONNECTING, G.CONNECT_OK): (
        S.CONNECTED,
        {A.RETIRE_POOL, A.RESET_ATTEMPTS, A.WAKE_WAITERS},
    ),
    (S.RECONNECTING, G.CONNECT_TRANSIENT): (S.RECONNECTING, {A.RETRY}),
    (S.RECONNECTING, G.CONNECT_PERMANENT): (S.FAILED, {A.WAKE_WAITERS, A.SLOW_PROBE}),
    (S.RECONNECTING, G.GIVE_UP): (S.FAILED, {A.WAKE_WAITERS, A.SLOW_PROBE}),
    (S.FAILED, G.CONNECT_OK): (S.CONNECTED, {A.RETIRE_POOL, A.RESET_ATTEMPTS, A.WAKE_WAITERS}),
    (S.FAILED, G.CONNECT_TRANSIENT): (S.FAILED, {A.SLOW_PROBE}),
    (S.FAILED, G.CONNECT_PERMANENT): (S.FAILED, {A.SLOW_PROBE}),
    (S.CONNECTING, G.CLOSE): (S.CLOSED, {A.WAKE_WAITERS, A.CLOSE_POOL}),
    (S.CONNECTED, G.CLOSE): (S.CLOSED, {A.WAKE_WAITERS, A.CLOSE_POOL}),
    (S.RECONNECTING, G.CLOSE): (S.CLOSED, {A.WAKE_WAITERS, A.CLOSE_POOL}),
    (S.FAILED, G.CLOSE): (S.CLOSED, {A.WAKE_WAITERS, A.CLOSE_POOL}),
}


@pytest.mark.parametrize(("state", "signal"), list(EXPECTED))
def test_every_transition(state: State, signal: Signal) -> None:
    new, actions = transition(state, signal)
    assert (new, set(actions)) == EXPECTED[(state, signal)]


@pytest.mark.parametrize(
    ("state", "signal"),
    [p for p in itertools.product(State, Signal) if p not in EXPECTED],
)
def test_other_pairs_are_ignored(state: State, signal: Signal) -> None:
    # A second report of the same outage, a late probe result after close: no-ops.
    assert transition(state, signal) == (state, ())


def test_table_is_exactly_the_expected_one() -> None:
    assert set(TRANSITIONS) == set(EXPECTED)


def test_pool_is_retired_before_waiters_are_woken() -> None:
    for (_state, _signal), (_new, actions) in TRANSITIONS.items():
        if A.RETIRE_POOL in actions:
            assert actions.index(A.RETIRE_POOL) < actions.index(A.WAKE_WAITERS)


def test_closed_is_terminal_and_failed_is_not() -> None:
    assert all(transition(S.CLOSED, g)[0] is S.CLOSED for g in Signal)
    assert transition(S.FAILED, G.CONNECT_OK)[0] is S.CONNECTED


def test_state_is_a_json_friendly_string() -> None:
    import json

    assert json.dumps({"s": S.RECONNECTING}) == '{"s": "reconnecting"}'
    assert S("failed") is S.FAILED
