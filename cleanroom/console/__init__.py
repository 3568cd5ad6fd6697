"""The web console for privacy officers, hospital data teams and auditors (issue #21).

A separate process (`cleanroom console`) that is a client of the gRPC API: a signed-in person's
session holds a short-lived bearer token of their principal, and every page reads and acts through
the SDK with it. Role checks and "another organisation's resource is absent" are the API's own.
"""
