"""Human-readable tables from result documents (pure string building)."""

from __future__ import annotations

from bench.stats import HIGHER_IS_BETTER, LOWER_IS_BETTER


def fmt(value) -> str:
    """Readable width-stable numbers: 12,345 / 123.4 / 1.234 / 0.01234."""
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.3f}"
    return f"{value:.4g}"


def direction(metric: str) -> str:
    if metric in LOWER_IS_BETTER:
        return "lower is better"
    if metric in HIGHER_IS_BETTER:
        return "higher is better"
    return ""


def system_table(doc: dict, headline: dict[str, tuple[str, ...]]) -> str:
    """Headline metrics of one system: median [min .. max] over its runs."""
    lines = [f"== {doc['system']} {doc.get('system_version', '')} "
             f"(repeat={doc['config']['repeat']}, quick={doc['config']['quick']}) =="]
    for key, wl in doc["workloads"].items():
        title = f"{key} {wl['title']}"
        for metric in headline.get(key, ()):
            stats = wl["summary"].get(metric)
            if stats is None:
                continue
            lines.append(f"  {title:<32} {metric:<18} {fmt(stats['median']):>10}  "
                         f"[{fmt(stats['min'])} .. {fmt(stats['max'])}]  "
                         f"n={stats['n']}  {direction(metric)}")
            title = ""
        if wl.get("error"):
            first = wl["error"].strip().splitlines()[-1][:100]
            lines.append(f"  {title or key:<32} ERROR: {first}")
    return "\n".join(lines)


def comparison_table(other_name: str, rows: list[dict]) -> str:
    """gdfut's speed-up over one system; >1 always means gdfut is better."""
    lines = [f"== gdfut vs {other_name}: medians; speed-up = other/gdfut for times, "
             f"gdfut/other for rates (>1: gdfut faster) =="]
    if not rows:
        lines.append("  (no metric measured on both)")
    for row in rows:
        lines.append(f"  {row['workload']:<4} {row['metric']:<18} gdfut {fmt(row['gdfut']):>10}  "
                     f"{other_name} {fmt(row['other']):>10}  gdfut {row['label']}")
    return "\n".join(lines)
