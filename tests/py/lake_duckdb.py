"""Reads the file sink's lake with DuckDB, as an analyst would, and reports what it finds.

Usage: lake_duckdb.py LAKE_DIR

For every stream directory: the schemas of its records (the distinct key lists, which must be
one), the column types DuckDB infers, the row count, the distinct messageIds, the rows the
README's dedup query keeps, the partitions (YYYY/MM/DD/HH from the path) and the rows with a
null `timestampUTC` (the field clients may omit). Prints one JSON object.
"""

import json
import os
import sys

import duckdb

lake = sys.argv[1]
con = duckdb.connect()
report = {}
for stream in sorted(os.listdir(lake)):
    files = f"{lake}/{stream}/*/*/*/*/*.ndjson"
    con.execute(
        f"""CREATE OR REPLACE VIEW events AS
            SELECT *,
                   regexp_extract(filename, '/(\\d{{4}})/(\\d{{2}})/(\\d{{2}})/(\\d{{2}})/[^/]+$', 1) AS year,
                   regexp_extract(filename, '/(\\d{{4}})/(\\d{{2}})/(\\d{{2}})/(\\d{{2}})/[^/]+$', 4) AS hour
            FROM read_json('{files}', format = 'newline_delimited', filename = true)"""
    )
    schemas = con.execute(
        f"SELECT DISTINCT json_keys(json) FROM read_json_objects('{files}', format = 'newline_delimited')"
    ).fetchall()
    types = {name: kind for name, kind, *_ in con.execute("DESCRIBE events").fetchall()}
    rows, distinct = con.execute("SELECT count(*), count(DISTINCT messageId) FROM events").fetchone()
    # The README's dedup query: one row per messageId (Firehose is at-least-once).
    deduped = con.execute(
        """SELECT count(*) FROM (
             SELECT * FROM events
             QUALIFY row_number() OVER (PARTITION BY messageId ORDER BY receivedAt) = 1)"""
    ).fetchone()[0]
    partitions = con.execute("SELECT count(DISTINCT (year, hour)) FROM events WHERE year <> ''").fetchone()[0]
    null_ts = None
    if "timestampUTC" in types:
        null_ts = con.execute(
            """SELECT count(DISTINCT messageId) FROM events WHERE timestampUTC IS NULL"""
        ).fetchone()[0]
    # RFC 3339 strings with milliseconds: every one must read as a timestamp.
    bad_times = con.execute(
        "SELECT count(*) FROM events WHERE TRY_CAST(receivedAt AS TIMESTAMPTZ) IS NULL"
    ).fetchone()[0]
    report[stream] = {
        "schemas": [list(s[0]) for s in schemas],
        "types": types,
        "rows": rows,
        "distinct_message_ids": distinct,
        "deduped_rows": deduped,
        "partitions": partitions,
        "null_timestampUTC": null_ts,
        "unreadable_receivedAt": bad_times,
    }
print(json.dumps(report))
