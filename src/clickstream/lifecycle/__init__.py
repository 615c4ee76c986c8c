"""The data's lifecycle after ingest: dead-letter replay, reconcile, a user's erasure."""
