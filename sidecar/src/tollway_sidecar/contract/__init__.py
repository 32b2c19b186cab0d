"""What the operator and the sidecar share besides the GatewayConfig (`tollway_sidecar.config.models`).

The sidecar writes the quota counters; the operator reads them into Budget and VirtualKey status.
Both sides must agree on the Redis key schema (`keys`), the calendar periods (`periods`), money as
integer nano-USD (`money`), which models the price catalogue knows (`catalog`) and how counters are
read (`counters`, `redis_counters`). These modules need only the base install (pydantic,
genai-prices) — `redis_counters` also `redis`, which both images have — so the operator image,
which has none of the sidecar's extras, can import them. import-linter keeps it that way.
"""
