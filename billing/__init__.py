"""Billing: the price book, usage and cost from the ClickHouse rollups, monthly invoices."""
