-- The kind of an image's failure (failure::ErrorCode), beside its message in `error`.
ALTER TABLE images ADD COLUMN error_code TEXT;
