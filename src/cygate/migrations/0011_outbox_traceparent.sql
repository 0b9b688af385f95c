-- Traces: the W3C traceparent of the request that wrote an outbox row, so the relay and the
-- consumers link their spans to it (docs/observability.md). NULL when tracing is off or the
-- write was not traced. Rows written by cygate_place_order take it from the transaction's
-- setting cygate.traceparent (set only while a sampled request is traced).
ALTER TABLE outbox ADD COLUMN traceparent text
    DEFAULT nullif(current_setting('cygate.traceparent', true), '');
