"""The activation-outlier tables of the outliers probe: Table 5's rows (top-k and median of
|x| per activation type) and top-1 per layer as result cells, and the terminal / report
tables of Table 5 and of the metric per attention-logit bit width."""

from __future__ import annotations

from typing import Optional

from diffeval.probes.base import TableData, metric
from diffeval.probes.streams import RANKS, STAT_KEYS

BLANK = {"activation": None, "layer": None, "bits": None}  # the cell keys a kind of cell leaves empty


def stats_cells(label: str, stats: dict, n_seq: int, out: dict) -> list[dict]:
    """One model's Table-5 cells and top-1 per layer (`stats`: the state's finalised
    statistics); adds "<activation>.<stat>" metrics to `out`."""
    cells = []
    for name, row in stats["activations"].items():
        cells.append({"model": label, **BLANK, "kind": "activation", "activation": name, "n": int(row["count"]),
                      **{k: round(float(row[k]), 6) for k in STAT_KEYS if k in row},
                      "median_exact": bool(row["median_exact"])})
        out.update({f"{name}.{k}": metric(row[k], int(row["count"]), None) for k in STAT_KEYS if k in row})
    for name, tops in stats["per_layer_top1"].items():
        cells.extend({"model": label, **BLANK, "kind": "layer", "activation": name, "layer": i,
                      "n": n_seq, "top1": round(float(v), 6)} for i, v in enumerate(tops))
    return cells


SHORT = {"attention_logits": "attn logits", "attention_logits_map1": " map 1",
         "attention_logits_map2": " map 2", "hidden_states": "hidden"}  # table rows, Table 5's names


def outliers_table(results: dict) -> TableData:
    """Table 5: one row per model and activation type."""
    counts = sorted({results["metrics"][m["label"]]["n_tokens"]["value"] for m in results["models"]})
    rows, styles, sections = [], {}, set()
    for m in results["models"]:
        sections.add(len(rows))
        for i, row in enumerate(c for c in results["cells"] if c["model"] == m["label"] and c["kind"] == "activation"):
            name = row["activation"]
            if name.endswith(("_map1", "_map2")):
                styles[len(rows)] = "dim"
            rows.append([m["label"] if i == 0 else "", SHORT.get(name, name),
                         *[_num(row.get(f"top{r}")) for r in RANKS], _num(row["median"])])
    return TableData(f"Activation outliers: |x| over {', '.join(f'{int(n):,}' for n in counts)} tokens per model",
                     ["model", "activation", *[f"top-{r}" for r in RANKS], "median"], rows, styles=styles,
                     sections=frozenset(sections - {0}))


def quant_table(results: dict) -> TableData:
    """The metric per attention-logit bit width (no rows without quantization)."""
    quant = [c for c in results["cells"] if c["kind"] == "quant"]
    bits = sorted({c["bits"] for c in quant}, reverse=True)
    which = results["task"]["params"]["metric"]
    by = {(c["model"], c["bits"]): c["value"] for c in quant}
    rows = [[m["label"], *[_num(by.get((m["label"], b)), 3 if which == "needle" else 4) for b in bits]]
            for m in results["models"]] if quant else []
    return TableData(f"{'Mean token NLL' if which == 'nll' else 'Needle accuracy'} vs attention-logit bits",
                     ["model", *[f"{b} bits" + (" (float)" if b == 16 else "") for b in bits]], rows)


def _num(v, digits: Optional[int] = None) -> str:
    """Fixed digits when given; else one decimal from 10 up (as Table 5), 3 significant below."""
    if v is None:
        return "-"
    if digits is not None:
        return f"{v:.{digits}f}"
    return f"{v:.1f}" if abs(v) >= 9.95 else f"{v:#.3g}"
