-- One delivery per finished request that has a webhook target. It is inserted in the same
-- transaction as the request's final roll-up, so it can be neither lost nor doubled.
CREATE TABLE webhook_deliveries (
    id               UUID PRIMARY KEY,          -- the webhook-id header, the same on every retry
    request_id       UUID NOT NULL UNIQUE REFERENCES requests (id) ON DELETE CASCADE,
    url              TEXT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending',  -- pending, delivered, failed
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    locked_by        TEXT,
    locked_until     TIMESTAMPTZ,
    payload          TEXT,                      -- built once, so every retry sends the same body
    event_at         TIMESTAMPTZ NOT NULL,      -- when the request finished
    last_status_code INTEGER,
    last_error       TEXT,
    delivered_at     TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';

-- Every attempt, for the record.
CREATE TABLE webhook_attempts (
    id           BIGSERIAL PRIMARY KEY,
    delivery_id  UUID NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempted_at TIMESTAMPTZ NOT NULL,
    status_code  INTEGER,
    error        TEXT,
    duration_ms  BIGINT NOT NULL
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);

-- Service-wide values that must survive restarts (the generated webhook secret).
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
