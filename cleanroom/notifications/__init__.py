"""Officer notifications (email through SMTP, an HMAC-signed webhook) from an outbox shared by replicas."""
