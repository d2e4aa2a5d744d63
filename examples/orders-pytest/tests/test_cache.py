"""What Redis holds: cached orders, their invalidation, the rate limit, and nothing outside the prefix."""


def place(client, customer="ada"):
    reply = client.post("/orders", json={"customer": customer, "items": [{"sku": "mug", "quantity": 1}]})
    return reply


def test_the_second_read_comes_from_the_cache(catalog):
    order_id = place(catalog).get_json()["id"]
    first = catalog.get(f"/orders/{order_id}")
    second = catalog.get(f"/orders/{order_id}")
    assert first.headers["X-Cache"] == "miss"
    assert second.headers["X-Cache"] == "hit"
    assert first.get_json() == second.get_json()


def test_paying_drops_the_cached_order(catalog):
    order_id = place(catalog).get_json()["id"]
    catalog.get(f"/orders/{order_id}")
    catalog.post(f"/orders/{order_id}/pay")
    reply = catalog.get(f"/orders/{order_id}")
    assert reply.headers["X-Cache"] == "miss"
    assert reply.get_json()["status"] == "paid"


def test_cached_orders_expire(app, catalog):
    order_id = place(catalog).get_json()["id"]
    catalog.get(f"/orders/{order_id}")
    assert 0 < app.extensions["orders.cache"].order_ttl(order_id) <= 60


def test_a_customer_is_limited_per_minute(catalog):
    codes = [place(catalog).status_code for _ in range(6)]
    assert codes == [201] * 5 + [429]
    assert place(catalog, customer="grace").status_code == 201


def test_every_key_is_under_the_test_s_prefix(app, catalog, key_prefix):
    order_id = place(catalog).get_json()["id"]
    catalog.get(f"/orders/{order_id}")
    catalog.post(
        "/orders",
        json={"customer": "ada", "items": [{"sku": "tee", "quantity": 1}]},
        headers={"Idempotency-Key": "k"},
    )
    assert app.extensions["orders.cache"].keys() == sorted(
        [f"{key_prefix}order:{order_id}", f"{key_prefix}rate:ada", f"{key_prefix}idem:k"]
    )
