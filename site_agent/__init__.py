"""The site agent: runs at a hospital next to the local data.

It reads and validates the site's tables, answers the coordinator's queries
with fixed-shape summaries computed by the core, and never releases rows.
"""
