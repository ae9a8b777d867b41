"""Teacher: request building, clients, response cache, token plan, simulator server."""
