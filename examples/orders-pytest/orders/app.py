"""The HTTP API: JSON in, JSON out, errors as {"error": message} with the status that fits."""

from flask import Flask, jsonify, request

from orders.cache import Cache
from orders.store import Conflict, NotFound, Store

DEFAULT_RATE_LIMIT = 20


class BadRequest(Exception):
    """The request's body is not what the endpoint takes."""


def create_app(database_url, redis_url, schema="public", key_prefix="orders:", rate_limit=None):
    app = Flask(__name__)
    store = Store(database_url, schema)
    cache = Cache(redis_url, key_prefix)
    app.extensions["orders.store"] = store
    app.extensions["orders.cache"] = cache
    limit = rate_limit or DEFAULT_RATE_LIMIT

    @app.errorhandler(NotFound)
    def not_found(e):
        return jsonify(error=str(e)), 404

    @app.errorhandler(Conflict)
    def conflict(e):
        return jsonify(error=str(e)), 409

    @app.errorhandler(BadRequest)
    def bad_request(e):
        return jsonify(error=str(e)), 400

    @app.get("/health")
    def health():
        with store.transaction() as conn:
            conn.execute("SELECT 1")
        cache.redis.ping()
        return jsonify(status="ok")

    @app.post("/products")
    def add_product():
        body = _body()
        sku, name = body.get("sku"), body.get("name")
        price, stock = body.get("price_cents"), body.get("stock", 0)
        if not sku or not name:
            raise BadRequest("sku and name are required")
        if not _positive_int(price):
            raise BadRequest("price_cents must be a positive integer")
        if not isinstance(stock, int) or isinstance(stock, bool) or stock < 0:
            raise BadRequest("stock must be a non-negative integer")
        store.add_product(sku, name, price, stock)
        return jsonify(store.product(sku)), 201

    @app.get("/products/<sku>")
    def product(sku):
        return jsonify(store.product(sku))

    @app.post("/orders")
    def place_order():
        body = _body()
        customer, items = body.get("customer"), body.get("items")
        if not customer:
            raise BadRequest("customer is required")
        if not items:
            raise BadRequest("an order needs at least one item")
        wanted = {}
        for item in items:
            sku, quantity = item.get("sku"), item.get("quantity")
            if not sku or not _positive_int(quantity):
                raise BadRequest("each item needs a sku and a positive quantity")
            wanted[sku] = wanted.get(sku, 0) + quantity
        if cache.count_request(customer) > limit:
            return jsonify(error=f"{customer} placed more than {limit} orders a minute"), 429

        key = request.headers.get("Idempotency-Key")
        if key and not cache.claim_idempotency_key(key):
            earlier = cache.idempotent_order(key)
            if earlier is None:
                raise Conflict("a request with this Idempotency-Key is still in progress")
            return jsonify(store.order(earlier)), 200
        try:
            order_id = store.place_order(customer, wanted)
        except Exception:
            # A failed order may be retried with the same key.
            if key:
                cache.release_idempotency_key(key)
            raise
        if key:
            cache.remember_idempotent_order(key, order_id)
        return jsonify(store.order(order_id)), 201

    @app.get("/orders/<int:order_id>")
    def order(order_id):
        cached = cache.order(order_id)
        if cached is not None:
            return jsonify(cached), 200, {"X-Cache": "hit"}
        found = store.order(order_id)
        cache.keep_order(found)
        return jsonify(found), 200, {"X-Cache": "miss"}

    @app.get("/customers/<customer>/orders")
    def orders_of(customer):
        return jsonify(store.orders_of(customer))

    @app.post("/orders/<int:order_id>/pay")
    def pay(order_id):
        store.pay(order_id)
        cache.forget_order(order_id)
        return jsonify(store.order(order_id))

    @app.post("/orders/<int:order_id>/cancel")
    def cancel(order_id):
        store.cancel(order_id)
        cache.forget_order(order_id)
        return jsonify(store.order(order_id))

    return app


def _body():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
