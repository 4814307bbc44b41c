-- Retention (issue 18). A request the janitor has taken to delete is marked (`deleting_at`)
-- in the transaction that records its tombstone, and from then on is no longer served; its
-- outputs are deleted next, its rows last. `janitor_until` is the lease of the janitor doing
-- it: once it passes (that janitor died), another takes the deletion up again.
ALTER TABLE requests ADD COLUMN deleting_at TIMESTAMPTZ;
ALTER TABLE requests ADD COLUMN janitor_until TIMESTAMPTZ;
CREATE INDEX requests_updated ON requests (updated_at);
CREATE INDEX requests_deleting ON requests (deleting_at) WHERE deleting_at IS NOT NULL;

-- What is left of a deleted request: enough to answer 410 to its owner, until it is dropped
-- one retention period after the deletion.
CREATE TABLE tombstones (
    request_id UUID PRIMARY KEY,
    owner      TEXT NOT NULL,
    deleted_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX tombstones_deleted ON tombstones (deleted_at);
