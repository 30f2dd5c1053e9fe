"""The client side of the ledger (manager CLI and pipeline): signed API client, privacy module and keyring, registry
client, watchlist."""
