"""pgtenant benchmark harness (Python 3.11 standard library only). Entry point: bench/run.py."""
