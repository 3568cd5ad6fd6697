"""gRPC transport: thin servicers, auth, the error catalog and proto<->domain conversion."""
