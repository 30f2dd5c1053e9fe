"""The pure core: canonical encoding, signatures, Merkle trees, transactions, blocks and consensus messages."""
