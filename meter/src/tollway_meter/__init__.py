"""The meter: usage events from the Redis Stream into an idempotent ledger, periods and invoices."""
