"""resilientdb: an asyncio connection supervisor for asyncpg, aiomysql and aiosqlite.

A service hands it a DSN and stops writing reconnect code: the supervisor rides out database
restarts, failovers and dropped sockets, and replays an operation only when doing so cannot
apply a write twice. When it cannot be sure, it raises ``OutcomeUnknown``.
"""

from . import events
from ._backoff import Backoff
from ._database import Database
from ._params import Query
from ._row import Row
from ._states import State
from ._statistics import BackendStatistics
from ._streams import Stream
from ._subscription import Notification, Subscription
from ._supervisor import Supervisor
from .config import BackendConfig, Options
from .errors import (
    ConfigurationError,
    CopyInterrupted,
    DatabaseUnavailable,
    NotSupported,
    OutcomeUnknown,
    Overloaded,
    PreparedStatementsUnsupported,
    ResilientDBError,
    StreamInterrupted,
    SupervisorClosed,
    TransactionClosed,
    TransactionLost,
    TransactionRolledBack,
)
from .health import BackendHealth, HealthReport, HealthStatus

__version__ = "0.1.0"

__all__ = [
    "BackendConfig",
    "BackendHealth",
    "BackendStatistics",
    "Backoff",
    "ConfigurationError",
    "CopyInterrupted",
    "Database",
    "DatabaseUnavailable",
    "HealthReport",
    "HealthStatus",
    "NotSupported",
    "Notification",
    "Options",
    "OutcomeUnknown",
    "Overloaded",
    "PreparedStatementsUnsupported",
    "Query",
    "ResilientDBError",
    "Row",
    "State",
    "Stream",
    "StreamInterrupted",
    "Subscription",
    "Supervisor",
    "SupervisorClosed",
    "TransactionClosed",
    "TransactionLost",
    "TransactionRolledBack",
    "__version__",
    "events",
]
