"""Peak RSS against object count, backup-agent's commands beside rclone sync's: the chart of
bench/results/scale.json (written by `bench scale`). Usage: scale_chart.py scale.json out.png"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = json.load(open(sys.argv[1]))["rows"]
series = {}
for r in rows:
    label = r["tool"] if r["tool"] != "backup-agent" else "backup-agent " + r["case"]
    if r["case"].startswith("synthetic") and r["case"] != "synthetic plan" and r["case"] != "synthetic mark":
        continue
    if r["tool"] != "backup-agent" and r["case"] != "full backup":
        continue
    series.setdefault(label, []).append((r["objects"], r["max_rss_mib"]))

fig, ax = plt.subplots(figsize=(8, 5))
for label, pts in sorted(series.items()):
    pts.sort()
    xs, ys = zip(*pts)
    style = "--" if label.startswith("rclone") else "-"
    ax.plot(xs, ys, style, marker="o", label=label)
ax.set_xscale("log")
ax.set_xlabel("objects (manifest entries for the synthetic cases)")
ax.set_ylabel("peak RSS, MiB")
ax.axhline(128, color="grey", linewidth=0.8, linestyle=":")
ax.text(ax.get_xlim()[0], 130, " 128 MiB target", color="grey", fontsize=8)
ax.set_title("Peak memory against bucket size")
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
