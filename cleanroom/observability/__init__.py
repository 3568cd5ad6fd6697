"""What the service tells its operators: structured logs and Prometheus metrics (a lower layer every room may use)."""
