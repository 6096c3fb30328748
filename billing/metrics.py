"""Prometheus metrics of invoice runs (in the sink's /metrics, where the schedule runs)
and of the scoped usage view (in the receiver's).

The gauges say how to add them up across processes (`multiprocess_mode`) because the
receiver imports this module too, and its processes may share a port (a supervisor's
multiprocess mode, meterstream/core/service.py MULTIPROCESS_DIR)."""

from prometheus_client import Counter, Gauge, Histogram

INVOICES = Counter("meterstream_billing_invoices_created_total",
                   "Invoices created, by subject (deployment, end_user).", ["subject"])
RUNS = Counter("meterstream_billing_invoice_runs_total",
               "Invoice runs, by outcome (ok, problems, error).", ["outcome"])
RUN_SECONDS = Histogram("meterstream_billing_invoice_run_seconds",
                        "Duration of one invoice run.",
                        buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
PROBLEMS = Counter("meterstream_billing_invoice_problems_total",
                   "Subjects an invoice run could not invoice (unknown plan or model).")
ADJUSTMENTS = Counter("meterstream_billing_adjustments_created_total",
                      "Adjustments created for usage that landed after a subject's invoices, "
                      "by subject (deployment, end_user).", ["subject"])
UNBILLED = Counter("meterstream_billing_unbilled_late_usage_total",
                   "Subjects of a closed period found with usage its invoices do not hold "
                   "(reported in unbilled_usage, not billed), counted per invoice run.")
LAST_RUN = Gauge("meterstream_billing_last_invoice_run_timestamp_seconds",
                 "When the last scheduled invoice run finished (Unix time).",
                 multiprocess_mode="max")
NEXT_RUN = Gauge("meterstream_billing_next_invoice_run_timestamp_seconds",
                 "When the next scheduled invoice run is due (Unix time).",
                 multiprocess_mode="max")
WAITING = Gauge("meterstream_billing_invoice_run_waiting",
                "1 while the due invoice run waits, by what it waits for: grace (the period's "
                "end + METERSTREAM_LATE_GRACE + METERSTREAM_PRODUCE_TIMEOUT), worker (its "
                "group to commit the raw topic's offsets of then), sink (its group to commit "
                "the record topics' offsets after that); record_ends and raw_ends briefly.",
                ["stage"], multiprocess_mode="max")
LOOKS = Counter("meterstream_billing_invoice_run_looks_total",
                "Looks at the pipeline's progress by the waiting invoice run, by the stage it "
                "was at after the look.", ["stage"])
USAGE_VIEW_REQUESTS = Counter(
    "meterstream_usage_view_requests_total",
    "GET /v1/usage answers (in the receiver's /metrics), by status and reason (ok, "
    "unauthenticated, invalid_token, token_expired, token_revoked, invalid, ...).",
    ["status", "reason"])
USAGE_VIEW_SECONDS = Histogram(
    "meterstream_usage_view_seconds", "Time to compute one GET /v1/usage answer.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
