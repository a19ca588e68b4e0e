"""The plain notebook loop that speed.py --whole-process times against ``arcmil train``: the design note's
TransformerMIL on an .npz of equal-length bags, per-item Dataset + default DataLoader, Adam, validation
loss each epoch (best state kept), test ROC-AUC at the end. No arcmil import: only what a notebook has.

    python benchmarks/notebook_loop.py BAGS.npz --epochs 4
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, Dataset

from note_models import NoteTransformerMIL


class Bags(Dataset):
    def __init__(self, bags: np.ndarray, labels: np.ndarray):
        self.bags, self.labels = torch.from_numpy(bags), torch.from_numpy(labels.astype(np.float32))

    def __len__(self):
        return len(self.bags)

    def __getitem__(self, i):
        return self.bags[i], self.labels[i]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    tic = time.perf_counter()
    torch.manual_seed(0)
    data = np.load(args.data)
    lengths, labels = data["lengths"], data["labels"]
    bags = data["embeddings"].reshape(len(lengths), int(lengths[0]), -1)  # equal lengths
    bags = bags / np.linalg.norm(bags, axis=-1, keepdims=True)
    index = np.arange(len(labels))
    train, rest = train_test_split(index, test_size=0.3, stratify=labels, random_state=0)
    val, test = train_test_split(rest, test_size=0.5, stratify=labels[rest], random_state=0)
    loaders = {name: DataLoader(Bags(bags[part], labels[part]), batch_size=16, shuffle=name == "train")
               for name, part in (("train", train), ("val", val), ("test", test))}
    model = NoteTransformerMIL(input_dim=bags.shape[-1])
    criterion = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    @torch.no_grad()
    def scores(loader):
        model.eval()
        logits = torch.cat([model(x)[0] for x, _ in loader])
        y = torch.cat([y for _, y in loader])
        return torch.sigmoid(logits).numpy(), y.numpy(), criterion(logits, y).item()

    best, best_state = float("inf"), None
    for _ in range(args.epochs):
        model.train()
        for x, y in loaders["train"]:
            optimizer.zero_grad()
            criterion(model(x)[0], y).backward()
            optimizer.step()
        val_loss = scores(loaders["val"])[2]
        if val_loss < best:
            best, best_state = val_loss, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    probs, y, _ = scores(loaders["test"])
    print(f"test ROC-AUC {roc_auc_score(y, probs):.4f}, {time.perf_counter() - tic:.1f} s after imports")


if __name__ == "__main__":
    main()
