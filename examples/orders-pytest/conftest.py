"""Fixtures: each test gets the order service on a schema and a Redis key prefix of its own.

The servers come from the environment: `DATABASE_URL` (PostgreSQL) and `REDIS_URL`. Under
`testfleet run` they are the containers `testfleet.toml` declares; under plain pytest, whatever
servers the variables name (`services/build-image.sh` makes an image of both).
"""

import os
import uuid

import psycopg
import pytest
import redis

from orders import create_app


def _server(var):
    url = os.environ.get(var)
    if not url:
        pytest.fail(
            f"{var} is not set: run this suite with `testfleet run`, which starts the servers "
            "testfleet.toml declares, or point DATABASE_URL and REDIS_URL at servers of your own"
        )
    return url


@pytest.fixture(scope="session")
def database_url():
    return _server("DATABASE_URL")


@pytest.fixture(scope="session")
def redis_url():
    return _server("REDIS_URL")


@pytest.fixture
def schema(database_url):
    """A schema of this test's own, dropped with everything in it afterwards."""
    name = "t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{name}" CASCADE')


@pytest.fixture
def key_prefix(redis_url):
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = "t_" + uuid.uuid4().hex[:16] + ":"
    yield prefix
    r = redis.Redis.from_url(redis_url)
    for key in r.scan_iter(prefix + "*"):
        r.delete(key)
    r.close()


@pytest.fixture
def app(database_url, redis_url, schema, key_prefix):
    app = create_app(database_url, redis_url, schema=schema, key_prefix=key_prefix, rate_limit=5)
    app.config["TESTING"] = True
    app.extensions["orders.store"].create_tables()
    yield app
    app.extensions["orders.cache"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def catalog(client):
    """Three products with a little stock each."""
    for sku, name, price, stock in [
        ("mug", "Mug", 850, 10),
        ("tee", "T-shirt", 1900, 3),
        ("cap", "Cap", 1200, 1),
    ]:
        reply = client.post(
            "/products", json={"sku": sku, "name": name, "price_cents": price, "stock": stock}
        )
        assert reply.status_code == 201, reply.get_json()
    return client
