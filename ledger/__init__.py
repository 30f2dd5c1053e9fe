"""Proof-of-authority ledger: types, consensus, p2p, store, api, privacy, client, node, exporter, audit."""
