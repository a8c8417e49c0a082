"""Cross-framework parity tests."""
