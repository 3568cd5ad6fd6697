"""The `cleanroom` command line: one module per command group, the renderer, the demo."""
