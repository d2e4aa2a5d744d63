"""The health endpoint reaches both servers."""


def test_health_reaches_both_servers(client):
    assert client.get("/health").get_json() == {"status": "ok"}


def test_tables_live_in_the_test_s_schema(app, schema, database_url):
    import psycopg

    with psycopg.connect(database_url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1",
            (schema,),
        ).fetchall()
    assert [t[0] for t in tables] == ["order_items", "orders", "products"]
