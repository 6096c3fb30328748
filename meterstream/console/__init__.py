"""The usage console: meterstream's data as server-rendered HTML pages, for people.

`meterstream console` (meterstream/processes/console.py) serves it; `meterstream up`
starts it. It reads ClickHouse through the billing rollups (billing/), the registry from
Kafka and live quota status from a worker's API; it never opens the embedded engine
itself (docs/console.md says why).
"""
