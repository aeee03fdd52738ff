"""Backend adapters: everything driver-specific lives in one module per driver."""
