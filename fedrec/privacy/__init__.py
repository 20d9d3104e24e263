"""Privacy: differential privacy, secure aggregation, item hiding and audits."""
