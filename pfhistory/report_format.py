"""A Report as text (terminals and mail), csv and json (other tools).

All formats walk the same tables. Text shows bytes in binary units and times
in local time; csv and json carry the exact integers (times as epoch seconds
and ISO 8601) so a script can recompute anything the text says.
"""

import csv
import io
import json
import os
import sys

from pfhistory import outfile
from pfhistory.exceptions import PFError
from pfhistory.timespec import format_duration, format_epoch

__all__ = ["show", "write", "write_text", "write_csv", "write_json"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_bytes(n):
    if n is None:
        return "-"
    n = int(n)
    value, unit = float(n), 0
    while abs(value) >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{n} B" if unit == 0 else f"{value:.1f} {_UNITS[unit]}"


# One way to show instants and durations, shared with the report's sentences.
human_duration = format_duration
local_time = format_epoch


def show(value, kind):
    """How the text (and html) shows one value of a column of that kind."""
    if value is None:
        return "-"
    if kind == "bytes":
        return human_bytes(value)
    if kind == "int":
        return f"{int(value):,}"
    if kind == "time":
        return local_time(value)
    if kind == "duration":
        return human_duration(value)
    return str(value)


def _header(rep):
    return (f"pfhistory report: {local_time(rep.since)} to {local_time(rep.until)}"
            + (f"\ndatabase: {rep.database}" if rep.database else "")
            + f"\ngenerated: {local_time(rep.generated_at)}")


def write_text(rep, out):
    out.write(_header(rep) + "\n")
    for sec in rep.sections:
        out.write(f"\n== {sec.title} ==\n")
        for line in sec.lines:
            out.write(f"{line}\n")
        for t in sec.tables:
            if t.key == "timeline" or t.key == "top_host_bytes":
                continue      # charts' data: in csv, json and html
            out.write(f"\n{t.title}\n")
            if not t.rows:
                out.write("  (none)\n")
                continue
            cells = [[show(v, k) for v, k in zip(row, t.kinds)] for row in t.rows]
            widths = [max(len(c), *(len(r[i]) for r in cells))
                      for i, c in enumerate(t.columns)]
            right = [k in ("int", "bytes", "duration") for k in t.kinds]

            def line(values):
                parts = [v.rjust(w) if r else v.ljust(w)
                         for v, w, r in zip(values, widths, right)]
                return "  " + "  ".join(parts).rstrip() + "\n"

            out.write(line(t.columns))
            for row in cells:
                out.write(line(row))
            if t.note:
                out.write(f"  ({t.note})\n")


def write_json(rep, out):
    doc = {
        "since": rep.since, "until": rep.until,
        "since_iso": local_time(rep.since), "until_iso": local_time(rep.until),
        "generated_at": rep.generated_at, "database": rep.database,
        "sections": [{
            "key": s.key, "title": s.title, "lines": s.lines,
            "tables": [{"key": t.key, "title": t.title, "columns": t.columns,
                        "kinds": t.kinds, "note": t.note,
                        "rows": [list(r) for r in t.rows]} for t in s.tables],
            "charts": [{"key": c.key, "title": c.title, "table": c.table, "x": c.x,
                        "ys": c.ys, "style": c.style} for c in s.charts],
        } for s in rep.sections],
    }
    json.dump(doc, out, indent=1)
    out.write("\n")


def write_csv(rep, out):
    """Long form: one line per cell, so every table fits one csv."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["section", "table", "row", "column", "value", "shown"])
    for s in rep.sections:
        for i, line in enumerate(s.lines):
            w.writerow([s.key, "", i, "line", line, line])
        for t in s.tables:
            for r, row in enumerate(t.rows):
                for col, kind, value in zip(t.columns, t.kinds, row):
                    w.writerow([s.key, t.key, r, col, "" if value is None else value,
                                show(value, kind)])


def write(rep, fmt, path=None):
    """Render rep as fmt to standard output or to path: whole or not at all, owner-only."""
    if fmt == "html":
        from pfhistory.report_html import write_html as render
    else:
        render = {"text": write_text, "csv": write_csv, "json": write_json}[fmt]
    buf = io.StringIO()
    render(rep, buf)
    if path is None:
        sys.stdout.write(buf.getvalue())
        sys.stdout.flush()
        return
    if not path:
        raise PFError("--output is empty: give a file name")
    path = os.path.abspath(path)
    tmp = None
    try:
        fd, tmp = outfile.open_output(path)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(buf.getvalue())
        outfile.commit(tmp, path)
    except OSError as e:
        outfile.discard(tmp)
        raise PFError(f"cannot write the report to {path}: {e.strerror or e}") from None
