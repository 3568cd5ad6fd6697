"""Generated gRPC stubs for package cleanroom.v1 (made by `make proto`, never edited or committed)."""
