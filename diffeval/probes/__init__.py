"""Long-context probes: one module per probe, plus the shared haystack sources and statistics."""
