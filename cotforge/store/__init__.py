"""The run directory: ledger (one row per clip), bundle parts, shards and manifest."""
