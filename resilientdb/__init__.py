"""resilientdb: an asyncio connection supervisor for asyncpg, aiomysql and aiosqlite."""

__version__ = "0.1.0"
