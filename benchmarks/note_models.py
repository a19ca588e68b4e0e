"""The design note's own models, written as the note writes them (torch only, no arcmil): the
reference rows of recipe.py and the plain notebook loop of speed.py --whole-process."""
from __future__ import annotations

import math

import torch
from torch import nn


class NoteSinusoidal(nn.Module):
    """The note's table: 128 positions, added to the projected windows, then dropout."""

    def __init__(self, d_model: int, dropout_p: float, max_len: int = 128):
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_len, d_model)
        table[:, 0::2], table[:, 1::2] = torch.sin(position * freq), torch.cos(position * freq)
        self.register_buffer("table", table)
        self.dropout = nn.Dropout(dropout_p)

    def forward(self, h):
        return self.dropout(h + self.table[: h.shape[1]])


class NotePooler(nn.Module):
    def __init__(self, d_model: int, hidden: int = 128, dropout_p: float = 0.1):
        super().__init__()
        self.fc1, self.fc2, self.drop = nn.Linear(d_model, hidden), nn.Linear(hidden, 1), nn.Dropout(dropout_p)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, h):
        weights = torch.softmax(self.fc2(torch.tanh(self.fc1(self.drop(h)))).squeeze(-1), dim=1)
        return (weights[..., None] * h).sum(dim=1), weights


def _xavier(linear: nn.Linear) -> nn.Linear:
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class NoteTransformerMIL(nn.Module):
    """Section 1-2 of the note: Xavier projection, sin positions, nn.TransformerEncoder (pre-norm), pooler."""

    def __init__(self, input_dim=256, d_model=128, nhead=4, num_layers=2, dim_feedforward=256, dropout_p=0.1,
                 max_len=128):
        super().__init__()
        self.proj = _xavier(nn.Linear(input_dim, d_model))
        self.pos = NoteSinusoidal(d_model, dropout_p, max_len)  # the note's 128; longer bags need a longer table
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout_p, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.pooler = NotePooler(d_model, dropout_p=dropout_p)
        self.classifier = _xavier(nn.Linear(d_model, 1))

    def forward(self, x):
        z, weights = self.pooler(self.encoder(self.pos(self.proj(x))))
        return self.classifier(z).squeeze(-1), weights


class NoteLayer(nn.Module):
    """The note's TransformerEncoderLayerWithAttn: post-norm, GELU, nn.MultiheadAttention."""

    def __init__(self, d_model, nhead, dim_feedforward, dropout_p):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout_p, batch_first=True)
        self.ff = nn.Sequential(_xavier(nn.Linear(d_model, dim_feedforward)), nn.GELU(), nn.Dropout(dropout_p),
                                _xavier(nn.Linear(dim_feedforward, d_model)))
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop1, self.drop2 = nn.Dropout(dropout_p), nn.Dropout(dropout_p)

    def forward(self, h):
        out, attn = self.attn(h, h, h, need_weights=True, average_attn_weights=True)
        h = self.norm1(h + self.drop1(out))
        return self.norm2(h + self.drop2(self.ff(h))), attn


class NoteTransMIL(nn.Module):
    """Section 2-2 of the note: Xavier projection, sin positions, CLS token, NoteLayers, LayerNorm."""

    def __init__(self, input_dim=256, d_model=128, nhead=4, num_layers=2, dim_feedforward=256, dropout_p=0.1):
        super().__init__()
        self.proj = _xavier(nn.Linear(input_dim, d_model))
        self.pos = NoteSinusoidal(d_model, dropout_p)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        self.layers = nn.ModuleList(NoteLayer(d_model, nhead, dim_feedforward, dropout_p) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.classifier = _xavier(nn.Linear(d_model, 1))

    def forward(self, x):
        h = torch.cat([self.cls_token.expand(len(x), -1, -1), self.pos(self.proj(x))], dim=1)
        for layer in self.layers:
            h, attn = layer(h)
        return self.classifier(self.norm(h)[:, 0]).squeeze(-1), torch.softmax(attn[:, 0, 1:], dim=1)


@torch.no_grad()
def note_scores(model: nn.Module, loader, criterion, device="cpu") -> tuple:
    """(probabilities, labels, loss) of every bag of ``loader``, in eval mode (batches moved to ``device``)."""
    model.eval()
    logits = torch.cat([model(x.to(device))[0].cpu() for x, _ in loader])
    y = torch.cat([y for _, y in loader])
    return torch.sigmoid(logits).numpy(), y.numpy(), criterion(logits, y).item()


def train_note_loop(model: nn.Module, loaders: dict, criterion, epochs: int = 10, patience: int | None = 3,
                    device="cpu", optimizer=None) -> int:
    """The note's loop: Adam lr 1e-3, validation loss after each epoch, early stopping after ``patience``
    epochs without improvement (None: never), the best state restored. Returns the best epoch.
    ``device``: each batch is moved there as it comes (``.to(device)``), as the note does on a GPU.
    ``optimizer``: the note's Adam, made beforehand (its first construction imports torch._dynamo)."""
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-3)
    best, best_state, best_epoch, waited = float("inf"), None, 0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        for x, y in loaders["train"]:
            optimizer.zero_grad()
            criterion(model(x.to(device))[0], y.to(device)).backward()
            optimizer.step()
        val_loss = note_scores(model, loaders["val"], criterion, device)[2]
        if val_loss < best:
            best, best_epoch, waited = val_loss, epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if patience is not None and waited >= patience:
                break
    model.load_state_dict(best_state)
    return best_epoch
