-- An upload inserts one products row per CSV row and one images row per URL (10,000 and 30,000
-- for a large CSV). Postgres enforces a foreign key with an after-row trigger on every inserted
-- row: a query per row (and, for images.product_id, a lock with its WAL record on each product
-- row), or at least a re-read of the new row where the column is NULL, as duplicate_of mostly
-- is. Together that was about as much work as inserting the rows and their indexes (issue #6).
-- These checks could never fail: the upload is the only writer of products and images, and it
-- takes their request_id, product_id and duplicate_of from rows it inserts in the same
-- transaction. So these foreign keys go, and the statement-level triggers below keep what they
-- gave besides, ON DELETE CASCADE: deleting a request still deletes its products, a product its
-- images, and an image its duplicates, at one DELETE per statement instead of work per inserted
-- row. (TRUNCATE fires no trigger: truncate requests, products and images together.)

ALTER TABLE products DROP CONSTRAINT products_request_id_fkey;
-- Was redundant besides: an image reaches its request through its product.
ALTER TABLE images DROP CONSTRAINT images_request_id_fkey;
ALTER TABLE images DROP CONSTRAINT images_product_id_fkey;
ALTER TABLE images DROP CONSTRAINT images_duplicate_of_fkey;

CREATE FUNCTION products_delete_with_requests() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM products WHERE request_id IN (SELECT id FROM deleted_requests);
    RETURN NULL;
END
$$;

CREATE TRIGGER requests_delete_products AFTER DELETE ON requests
    REFERENCING OLD TABLE AS deleted_requests
    FOR EACH STATEMENT EXECUTE FUNCTION products_delete_with_requests();

CREATE FUNCTION images_delete_with_products() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM images WHERE product_id IN (SELECT id FROM deleted_products);
    RETURN NULL;
END
$$;

CREATE TRIGGER products_delete_images AFTER DELETE ON products
    REFERENCING OLD TABLE AS deleted_products
    FOR EACH STATEMENT EXECUTE FUNCTION images_delete_with_products();

-- A duplicate may belong to another product than its original. This trigger fires again for the
-- duplicates it deletes, which have no duplicates of their own; a statement-level trigger fires
-- even when no row was deleted, hence the check, without which it would never stop.
CREATE FUNCTION images_delete_duplicates() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM deleted_images) THEN
        DELETE FROM images WHERE duplicate_of IN (SELECT id FROM deleted_images);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER images_delete_duplicates AFTER DELETE ON images
    REFERENCING OLD TABLE AS deleted_images
    FOR EACH STATEMENT EXECUTE FUNCTION images_delete_duplicates();
