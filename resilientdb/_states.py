"""Backend states, the signals that move them, and the pure transition function.

``transition(state, signal)`` never awaits and touches nothing: it returns the next state and
the actions the supervisor task must carry out. Every transition is therefore a table row
that a unit test can check without an event loop.
"""

from __future__ import annotations

import enum

__all__ = ["Action", "Signal", "State", "transition"]


class State(enum.StrEnum):
    """The state of one backend (or, on the supervisor, the worst over all backends).

    A ``str`` enum so that it serialises as itself in JSON (FastAPI, health reports).
    """

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    CLOSED = "closed"


class Signal(enum.Enum):
    """What happened, as the supervisor task or a caller reports it."""

    CONNECT_OK = "connect_ok"  # an open or probe succeeded
    CONNECT_TRANSIENT = "connect_transient"  # an open or probe failed; retrying may help
    CONNECT_PERMANENT = "connect_permanent"  # bad password, unknown database, missing file
    GIVE_UP = "give_up"  # max_attempts or max_downtime exhausted while reconnecting
    CONNECTION_LOST = "connection_lost"  # a caller or the keepalive saw the connection die
    CLOSE = "close"


class Action(enum.Enum):
    """Work the supervisor does after a transition, in the order given."""

    RETIRE_POOL = "retire_pool"  # the old pool generation must not serve another call
    RESET_ATTEMPTS = "reset_attempts"
    RETRY = "retry"  # probe again after the next backoff delay
    SLOW_PROBE = "slow_probe"  # probe again after failed_probe_interval
    WAKE_WAITERS = "wake_waiters"  # callers at the gate re-check the state
    CLOSE_POOL = "close_pool"


_A = Action
_S = State
_G = Signal

# (state, signal) -> (new state, actions). A pair missing from the table is a no-op: for
# instance CONNECTION_LOST while already RECONNECTING (another caller saw the same outage)
# must not start a second reconnect loop.
_TABLE: dict[tuple[State, Signal], tuple[State, tuple[Action, ...]]] = {
    (_S.CONNECTING, _G.CONNECT_OK): (_S.CONNECTED, (_A.RESET_ATTEMPTS, _A.WAKE_WAITERS)),
    (_S.CONNECTING, _G.CONNECT_TRANSIENT): (_S.RECONNECTING, (_A.RETRY,)),
    (_S.CONNECTING, _G.CONNECT_PERMANENT): (_S.FAILED, (_A.WAKE_WAITERS, _A.SLOW_PROBE)),
    (_S.CONNECTED, _G.CONNECTION_LOST): (_S.RECONNECTING, (_A.RETRY,)),
    (_S.RECONNECTING, _G.CONNECT_OK): (
        _S.CONNECTED,
        (_A.RETIRE_POOL, _A.RESET_ATTEMPTS, _A.WAKE_WAITERS),
    ),
    (_S.RECONNECTING, _G.CONNECT_TRANSIENT): (_S.RECONNECTING, (_A.RETRY,)),
    (_S.RECONNECTING, _G.CONNECT_PERMANENT): (_S.FAILED, (_A.WAKE_WAITERS, _A.SLOW_PROBE)),
    (_S.RECONNECTING, _G.GIVE_UP): (_S.FAILED, (_A.WAKE_WAITERS, _A.SLOW_PROBE)),
    (_S.FAILED, _G.CONNECT_OK): (
        _S.CONNECTED,
        (_A.RETIRE_POOL, _A.RESET_ATTEMPTS, _A.WAKE_WAITERS),
    ),
    (_S.FAILED, _G.CONNECT_TRANSIENT): (_S.FAILED, (_A.SLOW_PROBE,)),
    (_S.FAILED, _G.CONNECT_PERMANENT): (_S.FAILED, (_A.SLOW_PROBE,)),
}
for _state in (_S.CONNECTING, _S.CONNECTED, _S.RECONNECTING, _S.FAILED):
    _TABLE[(_state, _G.CLOSE)] = (_S.CLOSED, (_A.WAKE_WAITERS, _A.CLOSE_POOL))
del _state

TRANSITIONS = _TABLE


def transition(state: State, signal: Signal) -> tuple[State, tuple[Action, ...]]:
    """The next state and the actions to carry out; unchanged and no actions when ignored."""
    return _TABLE.get((state, signal), (state, ()))


# Order used for the supervisor-wide state: the worst backend wins.
SEVERITY: dict[State, int] = {
    State.CONNECTED: 0,
    State.CONNECTING: 1,
    State.RECONNECTING: 2,
    State.FAILED: 3,
    State.CLOSED: 4,
}
