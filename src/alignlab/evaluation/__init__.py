"""Safety evaluation: prompt suites (bundled and public benchmarks), a refusal judge, KL to the reference, and
the before/after report of a run."""
