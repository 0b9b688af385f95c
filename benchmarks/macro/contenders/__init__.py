"""The contender apps: small, stock, readable programs doing the same job as cygate (or a floor
or baseline for it). Each is started by the harness in its own process; none imports cygate.

Shared pieces (the product query and its JSON shape) live in :mod:`._product`, so every
contender that reads the database does exactly the same work.
"""
