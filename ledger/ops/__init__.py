"""Operating a ledger: the `riskmask ledger` commands, the registry commands, local clusters, the block exporter."""
