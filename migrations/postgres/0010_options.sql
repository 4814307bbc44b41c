-- Per-upload options (issue 17): quality, size box and format, as JSON
-- ({"quality":75,"maxWidth":2000,"maxHeight":null,"format":"webp"}); NULL on requests made
-- before options existed, which are made with the process settings.
ALTER TABLE requests ADD COLUMN options TEXT;
-- The uploaded CSV as it was (UTF-8, byte-order mark removed), so output.csv can keep its
-- header spellings, column order and extra columns; NULL on older requests.
ALTER TABLE requests ADD COLUMN csv TEXT;
