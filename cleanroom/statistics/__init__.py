"""DP aggregate statistics: the service (allowance, worker pool) above the engine that answers queries."""
