"""Upstream routing: the route file, the reverse proxy, balancing and resilience."""
