"""Ledger-checked fault runs against real server processes (see harness.py)."""
