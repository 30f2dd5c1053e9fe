"""Validator-to-validator transport (authenticated, sealed frames) and the block-sync wire formats."""
