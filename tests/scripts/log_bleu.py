"""A tiny sequence model trained as a translation tutorial would, logging its BLEU.

The task is copying a sequence of tokens in reverse (a toy "translation"); every EVERY
steps the model decodes a held-out batch greedily and the script logs `mon.log(bleu=...)`
(BLEU-2 with a brevity penalty of 1: the sequences have one length) and its token
accuracy. `mon.step` records step_time, samples_per_s and the rest by itself (it takes no
other extra fields).

    python log_bleu.py RUN_DIR

Settings from the environment: STEPS (default 60), EVERY (default 10), SEED (default 0),
EXTRA_METRIC (a name to log as well, each time, with the value 1.0: a test's hostile name).
"""

from __future__ import annotations

import math
import os
import sys
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

import tuimon

VOCAB = 12
LENGTH = 6


class Reverser(nn.Module):
    """Embeds each position, mixes them with one linear layer, predicts every token."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.mix = nn.Linear(16 * LENGTH, 64)
        self.out = nn.Linear(64, VOCAB * LENGTH)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.mix(self.embed(tokens).flatten(1)))
        return self.out(hidden).view(-1, LENGTH, VOCAB)


def ngrams(tokens: list[int], n: int) -> Counter[tuple[int, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu(hypotheses: list[list[int]], references: list[list[int]], order: int = 2) -> float:
    """Corpus BLEU-`order` in percent (clipped n-gram precisions, geometric mean)."""
    logs = []
    for n in range(1, order + 1):
        matched = total = 0
        for hypothesis, reference in zip(hypotheses, references, strict=True):
            counts, wanted = ngrams(hypothesis, n), ngrams(reference, n)
            matched += sum(min(count, wanted[gram]) for gram, count in counts.items())
            total += sum(counts.values())
        logs.append(math.log(max(matched, 1e-9) / max(total, 1)))
    return 100.0 * math.exp(sum(logs) / order)


def main() -> None:
    run_dir = sys.argv[1]
    steps = int(os.environ.get("STEPS", "60"))
    every = int(os.environ.get("EVERY", "10"))
    extra = os.environ.get("EXTRA_METRIC")
    torch.manual_seed(int(os.environ.get("SEED", "0")))
    model = Reverser()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    held_out = torch.randint(0, VOCAB, (64, LENGTH))
    with tuimon.Monitor(model, optimizer, run_dir=run_dir, quiet=True, total_steps=steps) as mon:
        for step in range(1, steps + 1):
            source = torch.randint(0, VOCAB, (32, LENGTH))
            target = source.flip(1)
            logits = model(source)
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            mon.step(loss, inputs=source)
            if step % every == 0:
                with torch.no_grad():
                    decoded = model(held_out).argmax(-1)
                reference = held_out.flip(1)
                scalars = {
                    "bleu": bleu(decoded.tolist(), reference.tolist()),
                    "token_acc": (decoded == reference).float().mean().item(),
                }
                if extra:
                    scalars[extra] = 1.0
                mon.log(**scalars)


if __name__ == "__main__":
    main()
