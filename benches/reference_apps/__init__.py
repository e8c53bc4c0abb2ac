"""The references the service is measured against in the same load run (DESIGN "Performance
model"), each a minimal app on the service's own Hypercorn settings:

- `bare` (`--modes bare`): a Starlette route that reads the body and answers a constant;
  the ceiling of a single-event request, what Hypercorn and Starlette cost by themselves.
- `copy` (`--modes copy`, module `plain_copy`): the same batch bodies through the same Rust
  normalizer, then one binary COPY straight into `events` per request, acknowledged after
  its commit; the ceiling of batches, what storing the rows costs by itself.

`python -m benches.reference_apps.serve --variant bare|copy --port N` runs one as the load
harness does. Nothing in `py/` imports this package: the service does not know about them.
"""
