"""The adapters' shared kit: what every driver room needs and nothing outside ``backends/`` may
import (docs/design.md, "The parts").

- ``errors``: one walker over a driver's error table (the cause chain, connect errors, unsent).
- ``pool``: the pools' common mechanics: the connect gate, generations, jittered lifetimes,
  drain on close, idle expiry and trimming, the keepalive pass, ``CLOSE_TIMEOUT``.
- ``wheel``: the shared timeout wheel for acquire waits.
- ``sockets``: TCP keepalive and ``TCP_USER_TIMEOUT`` on a driver's socket.
- ``roles``: ``target_session_attrs`` and whether a node (primary, standby, fenced) fits it.
"""
