"""
Real, independent SMTP peers for the tests: aiosmtpd in a thread and a
private Postfix instance in its own processes.

The pytest fixtures built on these live in ``tests/conftest.py``;
``tests/README.md`` explains how to use them.
"""
