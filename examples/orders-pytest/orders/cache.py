"""Redis: the order cache, idempotency keys and the per-customer rate limit, all under one prefix."""

import json

import redis

ORDER_TTL_SECONDS = 60
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
RATE_WINDOW_SECONDS = 60


class Cache:
    def __init__(self, url, prefix):
        self.redis = redis.Redis.from_url(url, decode_responses=True)
        self.prefix = prefix

    def _key(self, *parts):
        return self.prefix + ":".join(str(p) for p in parts)

    def order(self, order_id):
        raw = self.redis.get(self._key("order", order_id))
        return None if raw is None else json.loads(raw)

    def keep_order(self, order):
        self.redis.set(self._key("order", order["id"]), json.dumps(order), ex=ORDER_TTL_SECONDS)

    def forget_order(self, order_id):
        self.redis.delete(self._key("order", order_id))

    def order_ttl(self, order_id):
        return self.redis.ttl(self._key("order", order_id))

    def claim_idempotency_key(self, key):
        """True for the first request with `key`; later requests find the order it made."""
        return bool(self.redis.set(self._key("idem", key), "", nx=True, ex=IDEMPOTENCY_TTL_SECONDS))

    def remember_idempotent_order(self, key, order_id):
        self.redis.set(self._key("idem", key), str(order_id), ex=IDEMPOTENCY_TTL_SECONDS)

    def release_idempotency_key(self, key):
        self.redis.delete(self._key("idem", key))

    def idempotent_order(self, key):
        value = self.redis.get(self._key("idem", key))
        return int(value) if value else None

    def count_request(self, customer):
        """Counts one order request of `customer` in the current window; returns the count."""
        key = self._key("rate", customer)
        with self.redis.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, RATE_WINDOW_SECONDS, nx=True)
            count, _ = pipe.execute()
        return count

    def keys(self):
        return sorted(self.redis.scan_iter(self.prefix + "*"))

    def clear(self):
        for key in self.redis.scan_iter(self.prefix + "*"):
            self.redis.delete(key)

    def close(self):
        self.redis.close()
