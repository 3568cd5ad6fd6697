"""The server program: start-up checks (and, as the layout moves, app wiring, serve, config)."""
