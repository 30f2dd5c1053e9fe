"""The ledger API served by a node: HTTP server, endpoint table and handlers, request authentication,
TLS certificates."""
