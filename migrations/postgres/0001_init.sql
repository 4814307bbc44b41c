-- One row per upload. Counters are kept here (not recounted) so that settling an image is O(1)
-- however large the request is.
CREATE TABLE requests (
    id               UUID PRIMARY KEY,
    status           TEXT NOT NULL DEFAULT 'pending',
    owner            TEXT NOT NULL DEFAULT '',
    idempotency_key  TEXT,
    upload_digest    TEXT NOT NULL,
    webhook_url      TEXT,
    total_products   INTEGER NOT NULL,
    total_images     INTEGER NOT NULL,
    completed_images INTEGER NOT NULL DEFAULT 0,
    failed_images    INTEGER NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);
-- A retried upload with the same key (per owner) finds the first request.
CREATE UNIQUE INDEX requests_idempotency ON requests (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The seed's table, kept with its fields; one row per CSV row.
CREATE TABLE products (
    id                BIGSERIAL PRIMARY KEY,
    request_id        UUID NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    position          INTEGER NOT NULL,
    serial_number     BIGINT NOT NULL,
    product_name      TEXT NOT NULL,
    input_image_urls  TEXT NOT NULL,  -- JSON array, in CSV order
    output_image_urls TEXT,           -- JSON array, filled when the product settles
    status            TEXT NOT NULL DEFAULT 'pending',
    total_images      INTEGER NOT NULL,
    completed_images  INTEGER NOT NULL DEFAULT 0,
    failed_images     INTEGER NOT NULL DEFAULT 0,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL,
    UNIQUE (request_id, position),
    UNIQUE (request_id, serial_number)
);

-- One row per input image; this table is the work queue.
CREATE TABLE images (
    id             BIGSERIAL PRIMARY KEY,
    request_id     UUID NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    product_id     BIGINT NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    ordinal        INTEGER NOT NULL,  -- position in the whole request, CSV order
    position       INTEGER NOT NULL,  -- position within its product
    input_url      TEXT NOT NULL,
    -- The first image of the same request with the same URL: this row is settled with it and
    -- never downloaded on its own.
    duplicate_of   BIGINT REFERENCES images (id) ON DELETE CASCADE,
    status         TEXT NOT NULL DEFAULT 'pending',
    attempts       INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    locked_by      TEXT,
    locked_until   TIMESTAMPTZ,
    output_key     TEXT,
    output_url     TEXT,
    error          TEXT,
    input_format   TEXT,
    bytes_in       BIGINT,
    bytes_out      BIGINT,
    width          INTEGER,
    height         INTEGER,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    UNIQUE (request_id, ordinal)
);
-- Claiming: lowest ordinal first across all requests, so a small request uploaded behind a
-- large one is served right away (its ordinals are small) instead of waiting its turn.
CREATE INDEX images_claimable ON images (ordinal, id)
    WHERE status = 'pending' AND duplicate_of IS NULL;
-- Reclaiming leases of processes that died.
CREATE INDEX images_leased ON images (locked_until) WHERE status = 'processing';
CREATE INDEX images_product ON images (product_id, position);
CREATE INDEX images_duplicate_of ON images (duplicate_of) WHERE duplicate_of IS NOT NULL;
