"""Local stack (embedded Kafka broker, local ledger cluster), deployment files and their tooling."""
