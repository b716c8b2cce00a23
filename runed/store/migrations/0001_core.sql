-- Core schema: generic objects, the global change log, audit records.
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Every stored resource: JSON document keyed by (kind, namespace, name).
-- index_key is an optional secondary unique key (e.g. a token's keyed hash) for indexed lookups.
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    data TEXT NOT NULL,
    revision INTEGER NOT NULL,
    created_revision INTEGER NOT NULL,
    index_key TEXT,
    PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS objects_index_key ON objects (kind, index_key) WHERE index_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS objects_kind_name ON objects (kind, name);

-- The change log: one row per committed change; its rowid is the global revision.
CREATE TABLE IF NOT EXISTS changes (
    revision INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    op TEXT NOT NULL,
    data TEXT,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_kind_rev ON changes (kind, revision);

CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    subject TEXT NOT NULL,
    method TEXT NOT NULL,
    resource TEXT NOT NULL,
    verb TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    outcome TEXT NOT NULL,
    code TEXT NOT NULL,
    request_id TEXT NOT NULL,
    peer TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);
