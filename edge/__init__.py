"""HTTP caching edge proxies (issue 5; not built yet)."""
