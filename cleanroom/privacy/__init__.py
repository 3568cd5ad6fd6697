"""Privacy budgets: the ledger, officer controls, approvals and the audit trail (use cases)."""
