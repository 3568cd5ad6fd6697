"""Conversion between protobuf messages and domain objects, shared by the server and the SDK."""
