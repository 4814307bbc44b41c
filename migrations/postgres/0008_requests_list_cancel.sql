-- Issue 18: a request's savings, kept as counters (like its image counts) so the status body and
-- the request list read them in O(1); the images a cancel stopped; and the list's keyset order.
ALTER TABLE requests ADD COLUMN bytes_in BIGINT NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN bytes_out BIGINT NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN cancelled_images INTEGER NOT NULL DEFAULT 0;
UPDATE requests r SET bytes_in = s.bytes_in, bytes_out = s.bytes_out
FROM (SELECT request_id, SUM(bytes_in) AS bytes_in, SUM(bytes_out) AS bytes_out
      FROM images WHERE status = 'completed' GROUP BY request_id) s
WHERE s.request_id = r.id;
-- GET /api/requests: an owner's requests, newest first, one index range a page.
CREATE INDEX requests_owner_created ON requests (owner, created_at DESC, id DESC);
