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


def sample(model: MelodyModel, prefix: list[int], steps: int, mode: str, generator: torch.Generator,
           temperature: float = 0.9, min_dur: int = 1) -> list[int]:
    """Continue ``prefix`` until the melody covers ``steps`` sixteenths; returns the new tokens."""
    return sample_batch(model, [prefix], [steps], [mode], [generator], [min_dur], temperature)[0]


@torch.no_grad()
def sample_batch(model: MelodyModel, prefixes: list[list[int]], steps: list[int], modes: list[str],
                 generators: list[torch.Generator], min_durs: list[int], temperature: float = 0.9) -> list[list[int]]:
    """``sample`` for several requests at once: one batched GRU step per token for all of them.
    Each row keeps its own generator, so a row's output equals what ``sample`` gives alone."""
    model.eval()
    states, logits = [], []
    for prefix in prefixes:  # prefixes differ in length: encode each, then step together
        out, state = model(torch.tensor([prefix]))
        states.append(state)
        logits.append(out[0, -1])
    state = torch.cat(states, dim=1)
    last = [p[-1] for p in prefixes]
    covered = [0] * len(prefixes)
    pending = [False] * len(prefixes)
    outputs: list[list[int]] = [[] for _ in prefixes]
    step_logits = torch.stack(logits)
    while any(c < s for c, s in zip(covered, steps, strict=True)):
        tokens = []
        for row in range(len(prefixes)):
            if covered[row] >= steps[row]:
                tokens.append(PAD_FOR_DONE)
                continue
            mask = grammar_mask(last[row], modes[row])
            if is_pitch(last[row]) or last[row] == REST:
                left = steps[row] - covered[row]
                for d in range(1, min(min_durs[row], left)):
                    mask[DUR0 + d - 1] = float("-inf")
                for d in range(left + 1, 17):
                    mask[DUR0 + d - 1] = float("-inf")
            probs = torch.softmax(step_logits[row] / temperature + mask, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generators[row]))
            outputs[row].append(token)
            if is_dur(token) and pending[row]:
                covered[row] += token - DUR0 + 1
            pending[row] = is_pitch(token) or token == REST
            last[row] = token
            tokens.append(token)
        out, state = model(torch.tensor(tokens).unsqueeze(1), state)
        step_logits = out[:, -1]
    return outputs


PAD_FOR_DONE = 0  # rows that finished keep stepping on padding; their outputs are no longer read
