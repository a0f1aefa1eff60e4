"""Figure functions built on matplotlib's object-oriented API (Agg canvas, no pyplot state)."""
