"""HTTP handlers: ingest, query and operations endpoints."""
