-- Orders (issue 7). The claim token of an Idempotency-Key: only the attempt that holds it may
-- record the response or release the key, so a retry that took over a stale claim (its first
-- process died) can never be overwritten by a late first attempt.
ALTER TABLE idempotency_keys ADD COLUMN claim uuid;

-- The admin's list of every order, newest first (a customer's list uses orders_user_created_idx).
CREATE INDEX orders_created_idx ON orders (created_at DESC, id);
