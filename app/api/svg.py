"""Small server-rendered SVG charts for the operator page: no JavaScript, nothing loaded from outside.

Every number is formatted here and every text goes through html.escape, so a chart is safe to embed.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

W, H, PAD = 560, 180, 36


def _frame(title: str, body: str, y_lo: str, y_hi: str, x_lo: str = "", x_hi: str = "") -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" class="chart">'
            f"<title>{escape(title)}</title>"
            f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 8}" y2="{H - PAD}" class="axis"/>'
            f'<line x1="{PAD}" y1="10" x2="{PAD}" y2="{H - PAD}" class="axis"/>'
            f'<text x="{PAD - 4}" y="16" text-anchor="end">{escape(y_hi)}</text>'
            f'<text x="{PAD - 4}" y="{H - PAD}" text-anchor="end">{escape(y_lo)}</text>'
            f'<text x="{PAD}" y="{H - PAD + 14}">{escape(x_lo)}</text>'
            f'<text x="{W - 8}" y="{H - PAD + 14}" text-anchor="end">{escape(x_hi)}</text>'
            f"{body}</svg>")


def _scale(v: float, lo: float, hi: float, a: float, b: float) -> float:
    return a if hi == lo else a + (v - lo) * (b - a) / (hi - lo)


def line(points: Sequence[tuple[float, float]], *, title: str, y_fmt: str = "{:.3f}", x_lo: str = "",
         x_hi: str = "", floor: float | None = None) -> str:
    """A polyline of (x, y); FLOOR draws a dashed horizontal line (e.g. the accuracy floor)."""
    if not points:
        return f'<p class="muted">{escape(title)}: no data yet</p>'
    ys = [y for _, y in points] + ([floor] if floor is not None else [])
    xs = [x for x, _ in points]
    y_lo, y_hi = min(ys), max(ys)
    if y_hi - y_lo < 1e-9:
        y_lo, y_hi = y_lo - 0.01, y_hi + 0.01
    at = [(f"{_scale(x, min(xs), max(xs), PAD + 4, W - 12):.1f}", f"{_scale(y, y_lo, y_hi, H - PAD - 4, 14):.1f}")
          for x, y in points]  # each point's pixel position, formatted once for the line and its dot
    body = f'<polyline points="{" ".join(f"{cx},{cy}" for cx, cy in at)}" class="series"/>'
    body += "".join(f'<circle cx="{cx}" cy="{cy}" r="2.5" class="dot"><title>{escape(y_fmt.format(y))}</title>'
                    f"</circle>" for (cx, cy), (_, y) in zip(at, points, strict=True))
    if floor is not None:
        y = _scale(floor, y_lo, y_hi, H - PAD - 4, 14)
        body += f'<line x1="{PAD}" y1="{y:.1f}" x2="{W - 8}" y2="{y:.1f}" class="floor"><title>floor</title></line>'
    return _frame(title, body, y_fmt.format(y_lo), y_fmt.format(y_hi), x_lo, x_hi)


def histogram(counts: Sequence[int], *, title: str) -> str:
    """Counts over equal bins of [0, 1], against the uniform level a non-member set would give."""
    if not counts or sum(counts) == 0:
        return f'<p class="muted">{escape(title)}: no p-values recorded for this batch</p>'
    n, k = sum(counts), len(counts)
    top = max(max(counts), n / k) * 1.1
    bw = (W - PAD - 12) / k
    body = "".join(
        f'<rect x="{PAD + 2 + i * bw:.1f}" y="{_scale(c, 0, top, H - PAD, 10):.1f}" width="{bw - 3:.1f}" '
        f'height="{H - PAD - _scale(c, 0, top, H - PAD, 10):.1f}" class="bar"><title>p in [{i / k:.1f}, '
        f'{(i + 1) / k:.1f}): {c}</title></rect>' for i, c in enumerate(counts))
    uni = _scale(n / k, 0, top, H - PAD, 10)
    body += f'<line x1="{PAD}" y1="{uni:.1f}" x2="{W - 8}" y2="{uni:.1f}" class="floor"><title>uniform</title></line>'
    return _frame(title, body, "0", f"{top:.0f}", "p = 0", "p = 1")


def steps(points: Sequence[tuple[float, float]], *, title: str, x_lo: str = "", x_hi: str = "") -> str:
    """A step chart of a count over time (x in seconds)."""
    if len(points) < 2:
        return f'<p class="muted">{escape(title)}: not enough requests yet</p>'
    xs, ys = [x for x, _ in points], [y for _, y in points]
    top = max(max(ys), 1.0)
    path, prev = [], None
    for x, y in points:
        px_ = _scale(x, xs[0], xs[-1], PAD + 4, W - 12)
        py = _scale(y, 0, top, H - PAD, 14)
        if prev is not None:
            path.append(f"{px_:.1f},{prev:.1f}")
        path.append(f"{px_:.1f},{py:.1f}")
        prev = py
    body = f'<polyline points="{" ".join(path)}" class="series"/>'
    return _frame(title, body, "0", f"{top:.0f}", x_lo, x_hi)
