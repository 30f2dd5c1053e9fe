"""The offline auditor: ledger and audit-block verification, sealed decisions, redaction manifests."""
