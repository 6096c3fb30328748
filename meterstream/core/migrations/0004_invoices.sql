-- Invoices (billing/invoices.py): one per deployment and one per end user with
-- tokens, per billing period (a UTC calendar month). Money is Decimal, exact.
--
-- An invoice's id is derived from its period, its subject and its attempt, so
-- generating a period again writes the same ids: rows with the same key are
-- replaced (highest `version` wins), never added. A status change writes the
-- row again with a higher version. A `failed` invoice stays as it is when the
-- period is generated again; the new invoice is its next attempt, with its own id.
-- Read with FINAL (the table holds one row per subject and month).
CREATE TABLE IF NOT EXISTS invoices
(
    id String,
    -- First day of the billing month (YYYY-MM-01).
    period Date,
    -- 'deployment' (Convex resources) or 'end_user' (LLM tokens).
    subject LowCardinality(String),
    deployment String,
    user_id String,
    attempt UInt16,
    -- From the deployment registry and the events, at generation time.
    team String,
    project String,
    plan LowCardinality(String),
    region LowCardinality(String),
    currency LowCardinality(String),
    -- The exact sum of the lines' amounts, and that rounded half-up to cents.
    amount Decimal(38, 10),
    amount_due Decimal(38, 2),
    status LowCardinality(String),
    lines Nested
    (
        item String,
        description String,
        unit String,
        usage Decimal(38, 10),
        included Decimal(38, 10),
        quantity Decimal(38, 10),
        unit_price Decimal(38, 18),
        amount Decimal(38, 10)
    ),
    generated_at DateTime64(3, 'UTC'),
    status_changed_at DateTime64(3, 'UTC'),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
-- Invoices are few (one row per subject and month): one partition per year.
PARTITION BY toYear(period)
-- The replacing key: an id is one invoice. Period first, so that a period's
-- invoices (`invoices show`, generation) are one index range.
ORDER BY (period, id);
