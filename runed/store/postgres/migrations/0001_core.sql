-- Core schema: generic objects, the global change log, audit records, the revision counter.
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row: the last revision handed out. Writers take it with UPDATE ... RETURNING, which holds
-- its row lock until commit, so revisions commit in the order they are assigned.
CREATE TABLE IF NOT EXISTS revision (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO revision (id, value) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;

-- Names in the C collation: lists page in byte order (as under SQLite), whatever the database's locale.
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    namespace TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    data TEXT NOT NULL,
    revision BIGINT NOT NULL,
    created_revision BIGINT NOT NULL,
    index_key TEXT,
    PRIMARY KEY (kind, namespace, name)
);
CREATE UNIQUE INDEX IF NOT EXISTS objects_index_key ON objects (kind, index_key) WHERE index_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS objects_kind_name ON objects (kind, name);

CREATE TABLE IF NOT EXISTS changes (
    revision BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    op TEXT NOT NULL,
    data TEXT,
    ts DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_kind_rev ON changes (kind, revision);

CREATE TABLE IF NOT EXISTS audit (
    id BIGSERIAL PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
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
