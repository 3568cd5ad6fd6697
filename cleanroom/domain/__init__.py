"""Domain logic: pure Python, free of transport (grpc), storage (sqlalchemy) and torch."""
