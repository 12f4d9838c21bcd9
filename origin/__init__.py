"""The origin HTTP server that publishes into the DHT (issue 5; not built yet)."""
