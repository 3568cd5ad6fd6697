"""Who may call: principals and their bearer tokens, and the keys the service holds (KEK-wrapped)."""
