"""The case study's baselines, measured against the real service by the load harness.

Two ASGI apps on the same stack as `analytics` (Starlette on Hypercorn's asyncio worker) that
serve the same endpoints and answer in the same shape, but do their work the way the case
study's service did:

- `naive`: `async def` handlers that call every blocking step directly on the event loop
  (the case study's first version);
- `threaded`: the same handlers with every blocking step moved to a worker thread
  (the case study's fix), nothing else changed.

The blocking steps themselves (a synchronous key lookup, pure-Python normalization, a write
through the synchronous psycopg driver, the blocking billing SDK) live once, in `common`.
Run one with `python -m benches.casestudy.serve --variant naive|threaded --port N`.

They exist only as baselines: nothing in `py/` imports this package.
"""
