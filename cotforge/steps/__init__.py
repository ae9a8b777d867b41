"""The pipeline as steps: records in, records out, each with its own Stats and no knowledge of scheduling.

read (source -> ClipRef) -> decode (ClipRef -> Bundle) -> teacher (bundle row -> ClipOutcome) ->
bookkeeping (the single writer of ledger, cache, bundle parts) -> export (shards, eval sets,
manifest). An executor (`cotforge.executors`) decides where each step runs: worker processes,
asyncio, or a Ray cluster.
"""
