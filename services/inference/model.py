"""A small GRU language model over melody tokens, conditioned by mode and energy prefix tokens."""

from __future__ import annotations

import torch
from torch import nn

from inference.music import BAR, DUR0, REST, VOCAB, is_dur, is_pitch, pitch_token, scale

DEFAULTS = {"embed": 96, "hidden": 256, "layers": 2, "dropout": 0.1}


class MelodyModel(nn.Module):
    def __init__(self, embed: int = 96, hidden: int = 256, layers: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.config = {"embed": embed, "hidden": hidden, "layers": layers, "dropout": dropout}
        self.embed = nn.Embedding(VOCAB, embed)
        self.rnn = nn.GRU(embed, hidden, num_layers=layers, batch_first=True, dropout=dropout)
        self.out = nn.Linear(hidden, VOCAB)

    def forward(self, tokens: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, state = self.rnn(self.embed(tokens), state)
        return self.out(hidden), state


def grammar_mask(last: int, mode: str, low: int = -5, high: int = 19) -> torch.Tensor:
    """Allowed next tokens: after a pitch or rest comes a duration; otherwise a bar, a rest
    or a pitch in the requested scale within a singable range."""
    mask = torch.full((VOCAB,), float("-inf"))
    if is_pitch(last) or last == REST:
        mask[DUR0:VOCAB] = 0
        return mask
    mask[BAR] = 0 if is_dur(last) else float("-inf")
    mask[REST] = 0
    for rel in range(low, high + 1):
        if rel % 12 in scale(mode):
            mask[pitch_token(rel)] = 0
    return mask


@torch.no_grad()
def sample(model: MelodyModel, prefix: list[int], steps: int, mode: str, generator: torch.Generator,
           temperature: float = 0.9, min_dur: int = 1) -> list[int]:
    """Continue ``prefix`` until the melody covers ``steps`` sixteenths; returns the new tokens."""
    model.eval()
    logits, state = model(torch.tensor([prefix]))
    last, covered, out = prefix[-1], 0, []
    pending_pitch = False
    while covered < steps:
        mask = grammar_mask(last, mode)
        if is_pitch(last) or last == REST:
            left = steps - covered
            for d in range(1, min(min_dur, left)):
                mask[DUR0 + d - 1] = float("-inf")
            for d in range(left + 1, 17):
                mask[DUR0 + d - 1] = float("-inf")  # segments end exactly on a bar line
        probs = torch.softmax(logits[0, -1] / temperature + mask, dim=-1)
        token = int(torch.multinomial(probs, 1, generator=generator))
        out.append(token)
        if is_dur(token) and pending_pitch:
            covered += token - DUR0 + 1
        pending_pitch = is_pitch(token) or token == REST
        last = token
        logits, state = model(torch.tensor([[token]]), state)
    return out


