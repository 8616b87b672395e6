"""Benchmarks of gitlab2trello: ``python -m bench`` (``--quick``, or one name such as ``ack``).

Every figure is read against a baseline measured in the same run on the same machine; nothing
here asserts a timing. Results are printed and written to ``bench/results.md``.
"""
