"""Placing orders: totals, stock, validation and idempotency keys."""


def order(client, items, customer="ada", **headers):
    return client.post("/orders", json={"customer": customer, "items": items}, headers=headers)


def stock(client, sku):
    return client.get(f"/products/{sku}").get_json()["stock"]


def test_an_order_totals_its_items_and_reserves_stock(catalog):
    reply = order(catalog, [{"sku": "mug", "quantity": 2}, {"sku": "tee", "quantity": 1}])
    assert reply.status_code == 201
    placed = reply.get_json()
    assert placed["status"] == "pending"
    assert placed["total_cents"] == 2 * 850 + 1900
    assert [i["sku"] for i in placed["items"]] == ["mug", "tee"]
    assert stock(catalog, "mug") == 8
    assert stock(catalog, "tee") == 2


def test_repeated_items_are_summed(catalog):
    reply = order(catalog, [{"sku": "mug", "quantity": 1}, {"sku": "mug", "quantity": 2}])
    assert reply.get_json()["items"] == [{"sku": "mug", "quantity": 3, "price_cents": 850}]


def test_too_little_stock_changes_nothing(catalog):
    reply = order(catalog, [{"sku": "mug", "quantity": 1}, {"sku": "cap", "quantity": 2}])
    assert reply.status_code == 409
    assert "only 1 of cap left" in reply.get_json()["error"]
    assert stock(catalog, "mug") == 10
    assert catalog.get("/customers/ada/orders").get_json() == []


def test_an_unknown_product_is_not_found(catalog):
    assert order(catalog, [{"sku": "sofa", "quantity": 1}]).status_code == 404


def test_an_order_needs_items(catalog):
    assert order(catalog, []).status_code == 400
    assert order(catalog, [{"sku": "mug", "quantity": 0}]).status_code == 400


def test_a_customer_sees_their_orders_in_order(catalog):
    first = order(catalog, [{"sku": "mug", "quantity": 1}]).get_json()["id"]
    order(catalog, [{"sku": "tee", "quantity": 1}], customer="grace")
    second = order(catalog, [{"sku": "cap", "quantity": 1}]).get_json()["id"]
    listed = catalog.get("/customers/ada/orders").get_json()
    assert [o["id"] for o in listed] == [first, second]


def test_an_idempotency_key_places_one_order(catalog):
    first = order(catalog, [{"sku": "mug", "quantity": 2}], **{"Idempotency-Key": "k1"})
    again = order(catalog, [{"sku": "mug", "quantity": 2}], **{"Idempotency-Key": "k1"})
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert stock(catalog, "mug") == 8


def test_a_failed_order_frees_its_idempotency_key(catalog):
    refused = order(catalog, [{"sku": "cap", "quantity": 5}], **{"Idempotency-Key": "k2"})
    assert refused.status_code == 409
    placed = order(catalog, [{"sku": "cap", "quantity": 1}], **{"Idempotency-Key": "k2"})
    assert placed.status_code == 201
