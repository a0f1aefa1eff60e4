"""One renderer for every table a probe declares (`probes.base.TableData`): the terminal
(rich), markdown and LaTeX (booktabs)."""

from __future__ import annotations

from diffeval.probes.base import TableData


def print_table(table: TableData, console=None) -> None:
    """The table on stdout (rich), then its notes."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(table.title, highlight=False, style="italic")  # above the table, not wrapped to its width
    out = Table()
    for i, name in enumerate(table.header):
        out.add_column(name, justify="left" if i == 0 or not _numeric(table, i) else "right", no_wrap=i == 0)
    for i, row in enumerate(table.rows):
        if i in table.sections:
            out.add_section()
        out.add_row(*row, style=table.styles.get(i))
    console.print(out)
    for line in table.notes:
        console.print(line, highlight=False)


def _numeric(table: TableData, col: int) -> bool:
    """A column whose cells read as numbers ('-' for a missing one) is right-aligned."""
    def number(text: str) -> bool:
        head = text.split(" ")[0].split("±")[0].rstrip("*%")
        try:
            float(head)
            return True
        except ValueError:
            return text in ("-", "")
    return all(number(r[col]) for r in table.rows if col < len(r))


def _flat(text: str) -> str:
    return text.replace("\n", " ")


def markdown(table: TableData) -> str:
    lines = [f"**{_flat(table.title)}**", "", "| " + " | ".join(map(_flat, table.header)) + " |",
             "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(map(_flat, row)) + " |" for row in table.rows]
    if table.notes:
        lines += [""] + table.notes
    return "\n".join(lines) + "\n"


def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("$", r"\$"), ("±", r"$\pm$")):
        text = text.replace(a, b)
    return _flat(text)


def latex(table: TableData) -> str:
    cols = "l" + "".join("r" if _numeric(table, i) else "l" for i in range(1, len(table.header)))
    lines = ["% " + _flat(table.title), "\\begin{tabular}{" + cols + "}", "\\toprule",
             " & ".join(_tex_escape(h) for h in table.header) + r" \\", "\\midrule"]
    for i, row in enumerate(table.rows):
        if i in table.sections:
            lines.append("\\midrule")
        lines.append(" & ".join(_tex_escape(c) for c in row) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    lines += ["% " + note for note in table.notes]
    return "\n".join(lines) + "\n"


def print_run_tables(probe, results: dict, console=None) -> None:
    """Every table the probe prints after a run (on `console`, a rich Console)."""
    for view in probe.tables():
        if view.in_run:
            print_table(view.build(results), console)
