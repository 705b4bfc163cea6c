"""Reliability suites' shared machinery: a fast CLI runner, an independent pack codec and
validator, the pack fuzzer, the crash-injection runner, the tampering cases, and the
long-mode runner (``python3 -m tests.reliability.run --long --out DIR``)."""
