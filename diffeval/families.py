"""Model family names, importable without torch (plots and reports read them from results)."""

FAMILIES = ("transformer", "sha", "diff", "diff2")
DIFFERENTIAL = ("diff", "diff2")  # families whose attention rows are differences of two softmax maps
