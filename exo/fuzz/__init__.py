"""Stateful fuzzing of the hypercall ABI (docs/security.md): a harness, rules, invariants, a driver."""
