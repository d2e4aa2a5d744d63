"""An order service: products with stock, orders that reserve it, payment and cancellation.

Orders live in PostgreSQL; Redis caches them, remembers idempotency keys and counts requests for
the rate limit. `create_app` builds the Flask app for one database schema and one key prefix, so
tests (and tenants) never see each other's rows or keys.
"""

from orders.app import create_app

__all__ = ["create_app"]
