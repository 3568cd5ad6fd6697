"""gRPC transport: thin servicers, the guard (authentication, roles, error mapping), client streams, reflection."""
