"""The product catalogue: adding, reading and what is refused."""

import pytest


def test_added_product_reads_back(client):
    reply = client.post("/products", json={"sku": "mug", "name": "Mug", "price_cents": 850, "stock": 4})
    assert reply.status_code == 201
    assert client.get("/products/mug").get_json() == {
        "sku": "mug",
        "name": "Mug",
        "price_cents": 850,
        "stock": 4,
    }


def test_a_sku_is_added_once(catalog):
    reply = catalog.post("/products", json={"sku": "mug", "name": "Other", "price_cents": 1})
    assert reply.status_code == 409
    assert catalog.get("/products/mug").get_json()["name"] == "Mug"


@pytest.mark.parametrize(
    "body",
    [
        {"sku": "x", "name": "X", "price_cents": 0},
        {"sku": "x", "name": "X", "price_cents": -5},
        {"sku": "x", "name": "X", "price_cents": "12"},
        {"sku": "x", "name": "X", "price_cents": 100, "stock": -1},
        {"name": "X", "price_cents": 100},
    ],
    ids=["zero-price", "negative-price", "price-as-text", "negative-stock", "no-sku"],
)
def test_invalid_products_are_refused(client, body):
    reply = client.post("/products", json=body)
    assert reply.status_code == 400
    assert "error" in reply.get_json()


def test_unknown_product_is_not_found(client):
    assert client.get("/products/nothing").status_code == 404
