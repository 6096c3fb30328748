-- Adjustments and closed periods (billing/balances.py, billing/invoices.py,
-- billing/closing.py).
--
-- An adjustment is a row of `invoices` like any other, with `kind` 'adjustment' and
-- the id of the invoice whose pricing it follows in `adjusts`: the usage that landed
-- after a subject's invoice, charged as the difference between the charge on the
-- period's total usage and what the subject's invoices hold already. Existing rows are
-- invoices ('invoice', '').
ALTER TABLE invoices
    ADD COLUMN IF NOT EXISTS kind LowCardinality(String) DEFAULT 'invoice' AFTER attempt,
    ADD COLUMN IF NOT EXISTS adjusts String DEFAULT '' AFTER kind;

-- A closed period is billed no more: `invoices generate` reports its late usage in
-- `unbilled_usage` instead of issuing adjustments. Closing twice keeps the first row
-- (the code reads before it writes; a tie keeps the highest version).
CREATE TABLE IF NOT EXISTS closed_periods
(
    period Date,
    closed_at DateTime64(3, 'UTC'),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY period;

-- One row per subject of a closed period whose usage differs from what its invoices
-- hold: the lines an adjustment would have had. Each generation writes the whole
-- difference again (the highest version replaces the row). Read with FINAL.
CREATE TABLE IF NOT EXISTS unbilled_usage
(
    period Date,
    subject LowCardinality(String),
    deployment String,
    user_id String,
    currency LowCardinality(String),
    amount Decimal(38, 10),
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
    found_at DateTime64(3, 'UTC'),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYear(period)
ORDER BY (period, subject, deployment, user_id);
