"""The validator node process: consensus runtime, mempool, store, block sync, peer guards, metrics."""
