"""The harness: op specs, routing fuzzers, comparators, memory probes, timing and the CLI."""
