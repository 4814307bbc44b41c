-- Same schema as migrations/postgres, in SQLite's types: UUIDs as text, times as integer
-- milliseconds since the epoch (comparable, compact, no format ambiguity).
CREATE TABLE requests (
    id               TEXT PRIMARY KEY,
    status           TEXT NOT NULL DEFAULT 'pending',
    owner            TEXT NOT NULL DEFAULT '',
    idempotency_key  TEXT,
    upload_digest    TEXT NOT NULL,
    webhook_url      TEXT,
    total_products   INTEGER NOT NULL,
    total_images     INTEGER NOT NULL,
    completed_images INTEGER NOT NULL DEFAULT 0,
    failed_images    INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE UNIQUE INDEX requests_idempotency ON requests (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE products (
    id                INTEGER PRIMARY KEY,
    request_id        TEXT NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    position          INTEGER NOT NULL,
    serial_number     INTEGER NOT NULL,
    product_name      TEXT NOT NULL,
    input_image_urls  TEXT NOT NULL,
    output_image_urls TEXT,
    status            TEXT NOT NULL DEFAULT 'pending',
    total_images      INTEGER NOT NULL,
    completed_images  INTEGER NOT NULL DEFAULT 0,
    failed_images     INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    UNIQUE (request_id, position),
    UNIQUE (request_id, serial_number)
);

CREATE TABLE images (
    id              INTEGER PRIMARY KEY,
    request_id      TEXT NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    product_id      INTEGER NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    ordinal         INTEGER NOT NULL,
    position        INTEGER NOT NULL,
    input_url       TEXT NOT NULL,
    duplicate_of    INTEGER REFERENCES images (id) ON DELETE CASCADE,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    locked_by       TEXT,
    locked_until    INTEGER,
    output_key      TEXT,
    output_url      TEXT,
    error           TEXT,
    input_format    TEXT,
    bytes_in        INTEGER,
    bytes_out       INTEGER,
    width           INTEGER,
    height          INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (request_id, ordinal)
);
CREATE INDEX images_claimable ON images (ordinal, id)
    WHERE status = 'pending' AND duplicate_of IS NULL;
CREATE INDEX images_leased ON images (locked_until) WHERE status = 'processing';
CREATE INDEX images_product ON images (product_id, position);
CREATE INDEX images_duplicate_of ON images (duplicate_of) WHERE duplicate_of IS NOT NULL;
