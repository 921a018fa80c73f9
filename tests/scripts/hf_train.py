"""A Hugging Face Trainer script as its examples write one, with tuimon added as one
callback: `tuimon run hf_train.py`.

A tiny BERT built from a config and random token ids (no downloads, no tokenizer), so it
trains on a CPU in seconds. The run directory comes from `tuimon run` (TUIMON_RUN_DIR):
the script names none.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is built locally

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from tuimon.integrations.transformers import TuimonCallback

VOCAB = 100
SEQ = 16


class RandomTokens(torch.utils.data.Dataset):
    """Token ids; the label says whether the first one is in the lower half of the
    vocabulary (something to learn)."""

    def __init__(self, size: int = 128, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (size, SEQ), generator=generator)
        self.labels = (self.ids[:, 0] < VOCAB // 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.labels[index]}


def main() -> None:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=SEQ,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    args = TrainingArguments(
        output_dir="hf_output",
        per_device_train_batch_size=16,
        num_train_epochs=2,
        learning_rate=1e-3,
        warmup_steps=2,
        logging_steps=4,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=RandomTokens(),
        callbacks=[TuimonCallback()],
    )
    trainer.train()
    print("TRAIN DONE", trainer.state.global_step, flush=True)


if __name__ == "__main__":
    main()
