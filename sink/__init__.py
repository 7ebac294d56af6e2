"""The downstream sink: applies erasure commands for one target to its database, and acks them."""
