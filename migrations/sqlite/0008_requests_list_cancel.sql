-- Issue 18: a request's savings, kept as counters (like its image counts) so the status body and
-- the request list read them in O(1); the images a cancel stopped; and the list's keyset order.
ALTER TABLE requests ADD COLUMN bytes_in INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN bytes_out INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN cancelled_images INTEGER NOT NULL DEFAULT 0;
UPDATE requests SET
    bytes_in = (SELECT COALESCE(SUM(bytes_in), 0) FROM images
                WHERE images.request_id = requests.id AND images.status = 'completed'),
    bytes_out = (SELECT COALESCE(SUM(bytes_out), 0) FROM images
                 WHERE images.request_id = requests.id AND images.status = 'completed');
-- GET /api/requests: an owner's requests, newest first, one index range a page.
CREATE INDEX requests_owner_created ON requests (owner, created_at DESC, id DESC);
