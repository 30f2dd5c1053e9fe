"""``python -m ledger.node --config node0.json``: run one validator node (see :mod:`ledger.node.run`)."""

from ledger.node.run import main

if __name__ == "__main__":
    raise SystemExit(main())
