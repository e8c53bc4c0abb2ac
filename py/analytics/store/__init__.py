"""PostgreSQL storage: embedded server, pool, migrations, partitions and API keys."""
