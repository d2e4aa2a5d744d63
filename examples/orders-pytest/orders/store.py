"""PostgreSQL access: every query runs in the app's own schema, every change in one transaction."""

from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

SCHEMA_SQL = (Path(__file__).parent / "schema.sql").read_text()


class NotFound(Exception):
    """The product or order does not exist."""


class Conflict(Exception):
    """The change contradicts the current state (a duplicate, too little stock, a wrong status)."""


class Store:
    def __init__(self, dsn, schema):
        self.dsn = dsn
        self.schema = schema

    @contextmanager
    def transaction(self):
        # A connection per unit of work keeps concurrent requests apart; the search path puts
        # every unqualified table name in this store's schema.
        with psycopg.connect(
            self.dsn, row_factory=dict_row, options=f"-c search_path={self.schema}"
        ) as conn:
            with conn.transaction():
                yield conn

    def create_tables(self):
        with self.transaction() as conn:
            conn.execute(SCHEMA_SQL)

    def add_product(self, sku, name, price_cents, stock):
        try:
            with self.transaction() as conn:
                conn.execute(
                    "INSERT INTO products (sku, name, price_cents, stock) VALUES (%s, %s, %s, %s)",
                    (sku, name, price_cents, stock),
                )
        except psycopg.errors.UniqueViolation:
            raise Conflict(f"product {sku} already exists") from None

    def product(self, sku):
        with self.transaction() as conn:
            row = conn.execute("SELECT * FROM products WHERE sku = %s", (sku,)).fetchone()
        if row is None:
            raise NotFound(f"no product {sku}")
        return row

    def place_order(self, customer, items):
        """Reserves the stock of every item and records the order; all or nothing."""
        with self.transaction() as conn:
            total = 0
            lines = []
            # Locking in a fixed order means two orders for the same products never deadlock.
            for sku, quantity in sorted(items.items()):
                row = conn.execute(
                    "SELECT price_cents, stock FROM products WHERE sku = %s FOR UPDATE", (sku,)
                ).fetchone()
                if row is None:
                    raise NotFound(f"no product {sku}")
                if row["stock"] < quantity:
                    raise Conflict(f"only {row['stock']} of {sku} left")
                conn.execute(
                    "UPDATE products SET stock = stock - %s WHERE sku = %s", (quantity, sku)
                )
                total += row["price_cents"] * quantity
                lines.append((sku, quantity, row["price_cents"]))
            order_id = conn.execute(
                "INSERT INTO orders (customer, total_cents) VALUES (%s, %s) RETURNING id",
                (customer, total),
            ).fetchone()["id"]
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO order_items (order_id, sku, quantity, price_cents)"
                    " VALUES (%s, %s, %s, %s)",
                    [(order_id, *line) for line in lines],
                )
        return order_id

    def order(self, order_id):
        with self.transaction() as conn:
            return self._order(conn, order_id)

    def _order(self, conn, order_id):
        row = conn.execute(
            "SELECT id, customer, status, total_cents FROM orders WHERE id = %s", (order_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no order {order_id}")
        row["items"] = conn.execute(
            "SELECT sku, quantity, price_cents FROM order_items WHERE order_id = %s ORDER BY sku",
            (order_id,),
        ).fetchall()
        return row

    def orders_of(self, customer):
        with self.transaction() as conn:
            ids = conn.execute(
                "SELECT id FROM orders WHERE customer = %s ORDER BY id", (customer,)
            ).fetchall()
            return [self._order(conn, r["id"]) for r in ids]

    def pay(self, order_id):
        with self.transaction() as conn:
            self._move(conn, order_id, "pending", "paid")

    def cancel(self, order_id):
        """Cancels a pending order and puts its items back in stock."""
        with self.transaction() as conn:
            self._move(conn, order_id, "pending", "cancelled")
            conn.execute(
                "UPDATE products p SET stock = p.stock + i.quantity"
                " FROM order_items i WHERE i.order_id = %s AND i.sku = p.sku",
                (order_id,),
            )

    def _move(self, conn, order_id, from_status, to_status):
        row = conn.execute(
            "SELECT status FROM orders WHERE id = %s FOR UPDATE", (order_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no order {order_id}")
        if row["status"] != from_status:
            raise Conflict(f"order {order_id} is {row['status']}, not {from_status}")
        conn.execute("UPDATE orders SET status = %s WHERE id = %s", (to_status, order_id))
