"""The pretraining curve: training losses, held-out retrieval and the learning rate from metrics.jsonl."""
from __future__ import annotations

import json
from pathlib import Path


# Metric keys -> words in the legend.
LABELS = {"contrastive": "train contrastive", "ntp": "train next-token", "val_contrastive": "held-out contrastive",
          "val_infonce": "held-out InfoNCE", "val_ntp": "held-out next-token"}


def plot_curve(metrics: Path, png: Path, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    rows = [r for r in every if "contrastive" in r]
    evals = [r for r in every if "val_acc1" in r]
    if not rows and not evals:
        return
    fig, ax = plt.subplots(1, 3, figsize=(15, 3.5))
    steps = [r["step"] for r in rows]
    for k in ("contrastive", "ntp"):
        ax[0].plot(steps, [r[k] for r in rows], label=LABELS[k])
    for k in ("val_contrastive", "val_infonce", "val_ntp"):
        ax[0].plot([r["step"] for r in evals], [r[k] for r in evals], marker="o", label=LABELS[k])
    ax[0].set_xlabel("optimiser step"), ax[0].set_ylabel("loss"), ax[0].legend(fontsize=7)
    ax[0].set_title("Losses (lower is better)", fontsize=10)
    ax[1].plot([r["step"] for r in evals], [r["val_acc1"] for r in evals], marker="o",
               label="right answer ranked first")
    same = [r for r in evals if "val_acc1_same_q" in r]
    if same:  # within groups of users answering one question: only the user can separate them
        ax[1].plot([r["step"] for r in same], [r["val_acc1_same_q"] for r in same], marker="s",
                   label=f"same, among users asked one question (chance {1 / same[0]['val_same_q_group']:.3f})")
    for key, label, style in (("val_user_share", "user share of the embedding variance", "^"),
                              ("val_anchor_cka", "anchor CKA across future questions (1: question-blind)", "d")):
        have = [r for r in evals if key in r]
        if have:  # both in [0, 1]: the user's weight in the embedding, and how much the question moves users
            ax[1].plot([r["step"] for r in have], [r[key] for r in have], marker=style, ls=":", label=label)
    if evals:
        chance = 1.0 / evals[0]["val_pairs"]
        ax[1].axhline(chance, ls="--", c="grey", label=f"chance {chance:.3f}")
    ax[1].set_xlabel("optimiser step"), ax[1].set_ylabel("share of held-out users / share / CKA")
    ax[1].legend(fontsize=7)
    ax[1].set_title("Held-out: own-answer retrieval, user share, question geometry", fontsize=10)
    ax[2].plot(steps, [r["lr"] for r in rows])
    ax[2].set_xlabel("optimiser step"), ax[2].set_ylabel("learning rate")
    ax[2].set_title("Learning-rate schedule", fontsize=10)
    fig.suptitle(title or f"Pretraining curve ({metrics.parent.name or metrics.stem})", fontsize=12)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
