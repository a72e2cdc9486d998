"""A demo source database: customers, events, orders and invoices, generated server-side."""
