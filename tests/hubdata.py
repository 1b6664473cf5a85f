"""The standard devhub setup every test can use: task ids, tables and keys.

`STANDARD_CONFIG` is what the `devhub` fixture serves; pass your own dict
(same shape, see hubwatchd/devhub/settings.py) to `devhub_factory` for more.
"""

from __future__ import annotations

from typing import Any

# Container tasks, each with its own result table.
SALES_TASK = "11111111-1111-4111-8111-111111111111"
ORDERS_TASK = "22222222-2222-4222-8222-222222222222"
CATALOG_TASK = "33333333-3333-4333-8333-333333333333"
INVENTORY_TASK = "44444444-4444-4444-8444-444444444444"
# A task that is not a container: uploads answer 400.
REPORT_TASK = "55555555-5555-4555-8555-555555555555"
# A container task without a result table: uploads answer 400.
NO_TABLE_TASK = "66666666-6666-4666-8666-666666666666"
# A well-formed id no task has: uploads answer 404.
UNKNOWN_TASK = "99999999-9999-4999-8999-999999999999"

SALES_TABLE = "Sales"
ORDERS_TABLE = "Orders"
CATALOG_TABLE = "Catalog_Products"
INVENTORY_TABLE = "Inventory-EU"  # table names may hold hyphens

# Keys, each scoped as its name says.
SALES_KEY = "test-key-sales"  # Sales only
ORDERS_KEY = "test-key-orders"  # Orders only
INVENTORY_KEY = "test-key-inventory"  # Inventory-EU only
CATALOG_KEY = "test-key-catalog"  # Catalog_* (wildcard)
STAR_KEY = "test-key-star"  # ["*"]
ALL_TABLES_KEY = "test-key-all"  # no table list: every table
WRONG_KEY = "test-key-unknown"  # not a key devhub knows: 401

TABLE_OF = {
    SALES_TASK: SALES_TABLE,
    ORDERS_TASK: ORDERS_TABLE,
    CATALOG_TASK: CATALOG_TABLE,
    INVENTORY_TASK: INVENTORY_TABLE,
}

STANDARD_CONFIG: dict[str, Any] = {
    "task": [
        {"id": SALES_TASK, "name": "Sales", "table": SALES_TABLE},
        {"id": ORDERS_TASK, "name": "Orders", "table": ORDERS_TABLE},
        {"id": CATALOG_TASK, "name": "Catalog", "table": CATALOG_TABLE},
        {"id": INVENTORY_TASK, "name": "Inventory", "table": INVENTORY_TABLE},
        {"id": REPORT_TASK, "name": "Report", "type": "report"},
        {"id": NO_TABLE_TASK, "name": "No table"},
    ],
    "key": [
        {"name": "sales", "value": SALES_KEY, "tables": [SALES_TABLE]},
        {"name": "orders", "value": ORDERS_KEY, "tables": [ORDERS_TABLE]},
        {"name": "inventory", "value": INVENTORY_KEY, "tables": [INVENTORY_TABLE]},
        {"name": "catalog", "value": CATALOG_KEY, "tables": ["Catalog_*"]},
        {"name": "star", "value": STAR_KEY, "tables": ["*"]},
        {"name": "all", "value": ALL_TABLES_KEY},
    ],
}
