#!/usr/bin/env python3
"""Table and chart for compare.sh.

    report.py table CSV          markdown table: first/second snapshot and restore, snap's ratio to each tool
    report.py svg CSV OUT.svg    line chart of repository size after each snapshot, one line per tool
CSV columns: tool,phase,snapshot,seconds,bytes_added,peak_kib,repo_bytes
(phase is "snapshot" for every snapshot, "restore" for the restore; snapshot 1 is the first,
snapshot 2 the second).
"""
import csv, sys

TOOLS = ["plain", "restic", "borg", "snap"]
COLORS = {"plain": "#888888", "restic": "#1f77b4", "borg": "#2ca02c", "snap": "#d62728"}
DASH = {"borg": ' stroke-dasharray="7 5"'}   # borg and restic nearly coincide: dash the one drawn on top

def load(path):
    with open(path) as f:
        return list(csv.DictReader(f))

def mb(b):
    return float(b) / 1e6

def table(rows):
    def pick(tool, phase, snap=None):
        for r in rows:
            if r["tool"] == tool and r["phase"] == phase and (snap is None or r["snapshot"] == str(snap)):
                return r
    phases = [("first snapshot", "snapshot", 1), ("second snapshot", "snapshot", 2), ("restore", "restore", None)]
    print("| tool | phase | seconds | bytes added | peak MB | snap / tool: time | bytes | memory |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, phase, n in phases:
        s = pick("snap", phase, n)
        for tool in TOOLS:
            r = pick(tool, phase, n)
            if r is None:
                continue
            added = "—" if r["bytes_added"] == "" else "{:,}".format(int(r["bytes_added"]))
            peak = int(r["peak_kib"]) / 1024
            if tool == "snap" or s is None:
                ratios = ["", "", ""]
            else:
                def q(a, b):
                    return "%.2fx" % (float(a) / float(b)) if a not in ("", None) and b not in ("", None) and float(b) > 0 else "—"
                ratios = [q(s["seconds"], r["seconds"]), q(s["bytes_added"], r["bytes_added"]), q(s["peak_kib"], r["peak_kib"])]
            print("| %s | %s | %.2f | %s | %.0f | %s | %s | %s |" % (tool, label, float(r["seconds"]), added, peak, *ratios))
    # repository size after each snapshot
    snaps = sorted({int(r["snapshot"]) for r in rows if r["phase"] == "snapshot"})
    print()
    print("| repository MB after snapshot | " + " | ".join(str(n) for n in snaps) + " |")
    print("| --- |" + " ---: |" * len(snaps))
    for tool in TOOLS:
        vals = []
        for n in snaps:
            r = pick(tool, "snapshot", n)
            vals.append("%.1f" % mb(r["repo_bytes"]) if r else "—")
        print("| %s | %s |" % (tool, " | ".join(vals)))

def svg(rows, out):
    series = {t: sorted((int(r["snapshot"]), mb(r["repo_bytes"])) for r in rows if r["tool"] == t and r["phase"] == "snapshot") for t in TOOLS}
    series = {t: s for t, s in series.items() if s}
    W, H, L, R, T, B = 760, 420, 70, 150, 40, 50
    xmax = max(n for s in series.values() for n, _ in s)
    ymax = max(v for s in series.values() for _, v in s)
    base = 10 ** (len(str(int(ymax))) - 1)
    step = next(base * k for k in (0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10) if ymax / (base * k) <= 8)
    ytop = step * (int(ymax / step) + 1)
    px = lambda n: L + (W - L - R) * ((n - 1) / max(1, xmax - 1))
    py = lambda v: H - B - (H - T - B) * (v / ytop)
    o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">' % (W, H, W, H),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="22" font-size="15" font-weight="bold">Repository size after each snapshot (MB)</text>' % L]
    y = 0.0
    while y <= ytop + 1e-9:
        o.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>' % (L, py(y), W - R, py(y)))
        o.append('<text x="%d" y="%.1f" text-anchor="end">%g</text>' % (L - 6, py(y) + 4, y))
        y += step
    for n in range(1, xmax + 1):
        o.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#999"/>' % (px(n), H - B, px(n), H - B + 4))
        o.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (px(n), H - B + 18, n))
    o.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>' % (L, H - B, W - R, H - B))
    o.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>' % (L, T, L, H - B))
    o.append('<text x="%d" y="%d" text-anchor="middle">snapshot</text>' % ((L + W - R) / 2, H - 12))
    for i, (t, s) in enumerate(series.items()):
        c = COLORS[t]
        pts = " ".join("%.1f,%.1f" % (px(n), py(v)) for n, v in s)
        o.append('<polyline fill="none" stroke="%s" stroke-width="2.5"%s points="%s"/>' % (c, DASH.get(t, ""), pts))
        for n, v in s:
            o.append('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>' % (px(n), py(v), c))
        ly = T + 10 + 22 * i
        o.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2.5"%s/>' % (W - R + 12, ly, W - R + 32, ly, c, DASH.get(t, "")))
        o.append('<text x="%d" y="%d">%s %.0f MB</text>' % (W - R + 38, ly + 4, t, s[-1][1]))
    o.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(o) + "\n")

if __name__ == "__main__":
    rows = load(sys.argv[2])
    table(rows) if sys.argv[1] == "table" else svg(rows, sys.argv[3])
