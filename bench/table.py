"""The two-column table every benchmark prints (measure, ratio or value)."""

from __future__ import annotations


def print_table(rows: list[tuple[str, str]], header: str = "value") -> None:
    width = max(len(key) for key, _ in rows)
    print(f"{'measure':<{width}}  {header}")
    print("-" * (width + 40))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
