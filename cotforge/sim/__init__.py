"""`cotforge teacher-sim`: an OpenAI-compatible teacher simulator for tests, demos and load tests (never a model)."""
