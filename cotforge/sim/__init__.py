"""`cotforge teacher-sim`: an OpenAI-compatible teacher simulator for tests, demos and load tests (never a model).

One job per module: `config` (settings = CLI flags), `http11` (the HTTP server), `server` (routes and
the request cycle), `requests` (vLLM's checks), `media` (decoding and token counts), `answers` and
`phrases` (what it says), `service` (how long it takes), `faults` (what goes wrong), `stats` (what it
reports), `draws` (seeded randomness) and `process` (`SimProcess`, the simulator in a child process).
Nothing in cotforge's pipeline imports this package.
"""
