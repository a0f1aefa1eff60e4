"""Model family names, importable without torch (plots and reports read them from results)."""

FAMILIES = ("transformer", "sha", "diff", "diff2", "gated", "sinks")
DIFFERENTIAL = ("diff", "diff2")  # families whose attention rows are differences of two softmax maps
SOFTMAX = ("transformer", "sha", "gated", "sinks")  # families whose rows are one softmax map
GATES = ("element", "head")  # gated: one gate per output feature, or one per head
LAYER_TYPES = ("full_attention", "sliding_attention")
