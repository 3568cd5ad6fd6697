"""Sandboxes for untrusted or data-bearing work: gVisor (runsc), bubblewrap, and (later) Kubernetes
Jobs, all behind one interface (base.py)."""
