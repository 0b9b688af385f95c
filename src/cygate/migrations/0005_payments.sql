-- Payments: the recovery sweep looks for attempts stuck `initiated`; keep that look cheap
-- however many settled payments there are.
CREATE INDEX payments_initiated_idx ON payments (created_at) WHERE status = 'initiated';
