"""The server program: the composition root (app), configuration, start-up self-check, leases, request idempotency, serve."""
