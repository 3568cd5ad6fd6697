"""Dataset intake: reading uploaded files and de-identifying them with Arrow."""
