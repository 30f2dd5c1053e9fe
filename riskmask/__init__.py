"""riskmask: risk-dependent face de-identification for streaming CCTV, with a PoA audit ledger."""

__version__ = "0.1.0"
