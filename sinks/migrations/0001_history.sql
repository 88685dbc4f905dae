-- History of one generation: every valid event read from the log, with where it was read.
-- One row per (topic, partition, offset): ReplacingMergeTree folds re-deliveries of the same offsets
-- (a crash before the commit) into one row; readers use FINAL.
CREATE TABLE IF NOT EXISTS {database}.`transactions_{generation}`
(
    topic LowCardinality(String),
    partition UInt32,
    offset UInt64,
    transaction_id String,
    card_id String,
    customer_id String,
    merchant_id String,
    amount Float64,
    currency LowCardinality(String),
    event_time DateTime64(3, 'UTC'),
    channel Nullable(String),
    mcc Nullable(String),
    latitude Nullable(Float64),
    longitude Nullable(Float64),
    late Bool COMMENT 'beyond the allowed lateness: in history, never applied online',
    late_reason String,
    apply_seq UInt64 COMMENT 'the online apply batch that carried the event (processing order)',
    ingested_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (topic, partition, offset);

CREATE TABLE IF NOT EXISTS {database}.`fraud_labels_{generation}`
(
    topic LowCardinality(String),
    partition UInt32,
    offset UInt64,
    transaction_id String,
    card_id String,
    is_fraud Bool,
    label_time DateTime64(3, 'UTC'),
    source LowCardinality(String),
    ingested_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (topic, partition, offset);
