"""Tests for enclave_sim."""
