"""Draws bench results (results.json from `bench run`) as a bar chart of backup-agent's time
relative to each peer, with the issue's target for each bar. Usage: chart.py RESULTS.json OUT.png"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results = json.load(open(sys.argv[1]))
rows = [c for c in results["comparisons"] if c["ratio"] is not None]
labels = [f'{c["case"]}\nvs {c["peer"]}' for c in rows]
ratios = [c["ratio"] for c in rows]
colors = [
    "#999999" if c["target"] is None else ("#2a9d8f" if c["ratio"] <= c["target"] else "#e76f51")
    for c in rows
]
fig, ax = plt.subplots(figsize=(11, 0.55 * len(rows) + 1.5))
y = range(len(rows))
ax.barh(list(y), ratios, color=colors)
for i, c in enumerate(rows):
    ax.text(c["ratio"], i, f' {c["ratio"]:.2f}', va="center", fontsize=8)
    if c["target"] is not None:
        ax.plot([c["target"]] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
ax.axvline(1.0, color="#555555", linestyle=":", linewidth=1)
ax.set_yticks(list(y))
ax.set_yticklabels(labels, fontsize=8)
ax.invert_yaxis()
ax.set_xlabel("backup-agent wall time / peer wall time (median; lower is better; black tick = target)")
mode = "quick" if results["quick"] else "full"
ax.set_title(f'backup-agent vs peers, same run, {results["reps"]} repetition(s), {mode} data')
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
