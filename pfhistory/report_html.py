"""A Report as one self-contained HTML page: inline CSS, charts as inline SVG.

No scripts, fonts or images to fetch, so the file opens offline and in a mail
client; the layout is one narrow column that reads on a phone (tables scroll
sideways inside their box). Every chart's numbers are also in a table.
"""

from datetime import datetime, timezone
from html import escape

from pfhistory.report_format import human_bytes, local_time, show

__all__ = ["write_html"]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b")
_W, _H = 640, 240
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 64, 12, 12, 36

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;
background:#fff}
main{max-width:60rem;margin:0 auto;padding:0.8rem}
h1{font-size:1.35rem;margin:0.4rem 0}h2{font-size:1.15rem;margin-top:1.8rem;
border-bottom:1px solid #ccc}h3{font-size:1rem;margin:1.2rem 0 0.3rem}
.meta{color:#555;font-size:0.9rem}
nav{display:flex;flex-wrap:wrap;gap:0.2rem 0.9rem}nav a{white-space:nowrap}
details{margin:0.3rem 0 0.8rem}summary{cursor:pointer;color:#555}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:0.88rem;margin:0.2rem 0 0.6rem}
th,td{padding:0.2rem 0.5rem;border-bottom:1px solid #e4e4e4;text-align:left;
white-space:nowrap}td.n{text-align:right;font-variant-numeric:tabular-nums}
caption{text-align:left;font-weight:600;padding:0.3rem 0}
.note{color:#555;font-size:0.85rem}
figure{margin:1rem 0}figcaption{font-weight:600;font-size:0.95rem}svg{width:100%;height:auto;max-width:640px}
svg text{font-size:11px;fill:#444}.legend span{display:inline-block;margin-right:0.8rem;
font-size:0.85rem}.legend i{display:inline-block;width:0.8rem;height:0.8rem;
margin-right:0.3rem;vertical-align:-1px}
"""


def write_html(rep, out):
    title = f"pfhistory report {local_time(rep.since)} to {local_time(rep.until)}"
    out.write("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
              "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
              f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
              "<main>\n")
    out.write(f"<h1>{escape(title)}</h1>\n<p class=\"meta\">")
    if rep.database:
        out.write(f"Database {escape(rep.database)}. ")
    out.write(f"Generated {escape(local_time(rep.generated_at))}.</p>\n<nav>")
    for s in rep.sections:
        out.write(f"<a href=\"#{escape(s.key)}\">{escape(s.title)}</a>")
    out.write("</nav>\n")
    for s in rep.sections:
        tables = {t.key: t for t in s.tables}
        out.write(f"<section id=\"{escape(s.key)}\">\n<h2>{escape(s.title)}</h2>\n")
        for line in s.lines:
            out.write(f"<p>{escape(line)}</p>\n")
        for c in s.charts:
            t = tables.get(c.table)
            if t is not None:
                _chart(out, c, t)
        charted = {c.table for c in s.charts}
        for t in s.tables:
            if t.key in charted:
                # a chart's numbers: at hand, folded away on a phone
                out.write(f"<details><summary>{escape(t.title)}: the numbers</summary>\n")
                _table(out, t)
                out.write("</details>\n")
            else:
                _table(out, t)
        out.write("</section>\n")
    out.write("</main>\n</body>\n</html>\n")


def _table(out, t):
    out.write(f"<div class=\"scroll\"><table id=\"table-{escape(t.key)}\">"
              f"<caption>{escape(t.title)}</caption>\n<thead><tr>")
    for col in t.columns:
        out.write(f"<th scope=\"col\">{escape(col)}</th>")
    out.write("</tr></thead>\n<tbody>\n")
    if not t.rows:
        out.write(f"<tr><td colspan=\"{len(t.columns)}\">(none)</td></tr>\n")
    for row in t.rows:
        out.write("<tr>")
        for value, kind in zip(row, t.kinds):
            cls = " class=\"n\"" if kind in ("int", "bytes", "duration") else ""
            raw = "" if value is None else f" data-value=\"{escape(str(value))}\""
            out.write(f"<td{cls}{raw}>{escape(show(value, kind))}</td>")
        out.write("</tr>\n")
    out.write("</tbody></table></div>\n")
    if t.note:
        out.write(f"<p class=\"note\">{escape(t.note)}</p>\n")


def _short_time(epoch):
    """An axis label: local date and time to the minute."""
    return datetime.fromtimestamp(epoch, timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M")


def _tick(value, kind):
    return human_bytes(value) if kind == "bytes" else f"{int(value):,}"


def _chart(out, c, t):
    """A line or bar chart of columns c.ys against time column c.x."""
    points = [(r[c.x], [r[i] for i in c.ys]) for r in t.rows if r[c.x] is not None]
    out.write(f"<figure id=\"chart-{escape(c.key)}\">\n")
    names = [t.columns[i] for i in c.ys]
    kind = t.kinds[c.ys[0]] if c.ys else "int"
    values = [v for _x, vs in points for v in vs if v is not None]
    if not points or not values:
        out.write(f"<figcaption>{escape(c.title)}: no data</figcaption></figure>\n")
        return
    x0, x1 = points[0][0], points[-1][0]
    span = max(x1 - x0, 1)
    top = max(max(values), 1)
    pw, ph = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B

    def sx(x):
        if x1 == x0:
            return _PAD_L + pw / 2
        return _PAD_L + (x - x0) / span * pw

    def sy(y):
        return _PAD_T + ph - y / top * ph

    out.write(f"<figcaption>{escape(c.title)}</figcaption>\n")
    out.write(f"<svg viewBox=\"0 0 {_W} {_H}\" role=\"img\" "
              f"xmlns=\"http://www.w3.org/2000/svg\"><title>{escape(c.title)}</title>\n")
    for i in range(5):
        y = top * i / 4
        out.write(f"<line x1=\"{_PAD_L}\" x2=\"{_W - _PAD_R}\" y1=\"{sy(y):.1f}\" "
                  f"y2=\"{sy(y):.1f}\" stroke=\"#e4e4e4\"/>"
                  f"<text x=\"{_PAD_L - 4}\" y=\"{sy(y) + 4:.1f}\" text-anchor=\"end\">"
                  f"{escape(_tick(y, kind))}</text>\n")
    for x, anchor in ((x0, "start"), (x1, "end")) if x1 != x0 else ((x0, "middle"),):
        out.write(f"<text x=\"{sx(x):.1f}\" y=\"{_H - 12}\" text-anchor=\"{anchor}\">"
                  f"{escape(_short_time(x))}</text>\n")
    if c.style == "bar":
        width = max(pw / max(len(points), 1) - 1, 1)
        for x, vs in points:
            v = vs[0]
            if v is None:
                continue
            out.write(f"<rect x=\"{sx(x) - width / 2:.1f}\" y=\"{sy(v):.1f}\" "
                      f"width=\"{width:.1f}\" height=\"{_PAD_T + ph - sy(v):.1f}\" "
                      f"fill=\"{_COLORS[0]}\"/>\n")
    else:
        for j, _name in enumerate(names):
            pts = " ".join(f"{sx(x):.1f},{sy(vs[j]):.1f}" for x, vs in points
                           if vs[j] is not None)
            color = _COLORS[j % len(_COLORS)]
            out.write(f"<polyline fill=\"none\" stroke=\"{color}\" "
                      f"stroke-width=\"1.6\" points=\"{pts}\"/>\n")
            if len(points) <= 48:        # few points (hours): mark each one
                for x, vs in points:
                    if vs[j] is not None:
                        out.write(f"<circle cx=\"{sx(x):.1f}\" cy=\"{sy(vs[j]):.1f}\" "
                                  f"r=\"3\" fill=\"{color}\"/>\n")
    out.write("</svg>\n")
    if len(names) > 1:
        out.write("<div class=\"legend\">")
        for j, name in enumerate(names):
            out.write(f"<span><i style=\"background:{_COLORS[j % len(_COLORS)]}\"></i>"
                      f"{escape(name)}</span>")
        out.write("</div>\n")
    out.write("</figure>\n")
