-- The process that last claimed each image (kept after it settles, unlike locked_by).
ALTER TABLE images ADD COLUMN claimed_by TEXT;
