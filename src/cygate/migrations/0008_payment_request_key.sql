-- Payments: the client's Idempotency-Key of the request that started each attempt, so a retry
-- under the same key after a crash finds its attempt (and its outcome) instead of charging anew.
ALTER TABLE payments ADD COLUMN request_key text;
CREATE INDEX payments_request_key_idx ON payments (order_id, request_key)
    WHERE request_key IS NOT NULL;
