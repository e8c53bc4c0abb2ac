"""Loop-level machinery: named offload limiters, lifespan, the loop watchdog."""
