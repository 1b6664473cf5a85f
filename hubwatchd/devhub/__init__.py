"""devhub: a faithful local Data Hub for tests, the demo and dry runs.

It serves `POST /v1/Tasks/{taskId}/data` as the vendor documents it
(docs/hub-api.md), stores rows in SQLite result tables, and adds what tests
need under `/_devhub/`: tables, the request log and fault injection. It
needs the `devhub` extra (aiohttp, openpyxl); the daemon never imports this
package.

    settings.py   tasks, keys, limits and faults (TOML or the demo setup)
    formats.py    CSV, JSON and XLSX rows, streamed
    store.py      SQLite result tables, one transaction per upload
    faults.py     injected statuses, delays, cut connections, hangs, chaos
    app.py        the aiohttp handlers
    server.py     binding, the ready file, signals, shutdown
"""
