"""The coordinator: runs at the consortium, sends queries, combines sums, reports."""
