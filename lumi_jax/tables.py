"""Rich tables that never cut a value: numbers stay whole, text wraps, the table widens if it must.

At 80 columns (and so in every session log) rich shrinks a wide table by cutting cells short
with an ellipsis: `6,163,…` for 6,163,712. `print_table` marks the right-aligned columns (the
numbers) as never wrapped, lets the text columns fold onto more lines, and, when even then the
numbers do not fit, prints the table wider than the console instead of cutting them.
"""

from __future__ import annotations

from typing import Any


def whole_values(table: Any) -> Any:
    """Right-aligned columns (numbers, sizes, times) never wrap; the others fold. Returns the table."""
    for column in table.columns:
        if column.justify == "right":
            column.no_wrap = True
        else:
            column.overflow = "fold"
    return table


def width_needed(console: Any, table: Any) -> int:
    """The narrowest width that cuts no number: the unwrapped columns at their widest, the others
    at their narrowest (their longest word). A group of tables needs its widest table's."""
    if hasattr(table, "renderables"):
        return max((width_needed(console, each) for each in table.renderables), default=0)
    options = console.options.update_width(10_000)
    if not hasattr(table, "columns"):
        return console.measure(table, options=options).minimum
    try:
        columns = [table._measure_column(console, options, column) for column in table.columns]
        return table._extra_width + sum(m.maximum if column.no_wrap else m.minimum
                                        for m, column in zip(columns, table.columns, strict=True))
    except AttributeError:  # another rich: its natural width, which cuts nothing either
        return console.measure(table, options=options).maximum


def print_table(console: Any, table: Any) -> None:
    """`console.print(table)`, at the console's width or, if the numbers need more, at theirs.
    A group of tables (rich.console.Group) is printed the same way."""
    for each in getattr(table, "renderables", [table]):
        if hasattr(each, "columns"):
            whole_values(each)
    needed = width_needed(console, table)
    if needed <= console.width:
        console.print(table)
        return
    saved = console.__dict__.get("_width")  # None: the terminal's width, detected each time
    console.width = needed  # (print's own width= is capped at the console's)
    try:
        console.print(table)
    finally:
        console._width = saved
