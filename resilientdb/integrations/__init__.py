"""Optional integrations: ``resilientdb.integrations.fastapi`` and ``.prometheus``.

Each module imports its framework; importing ``resilientdb`` imports none of them.
"""
