"""The golden path itself: pure Python, no transport, database or DI library."""
