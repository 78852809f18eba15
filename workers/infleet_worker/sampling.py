"""Per-request sampling options that the batched fast path (`ModelRunner.sample`) does not cover: a `seed` for
reproducible sampling, presence/frequency penalties, `logit_bias` and log-probabilities.

Rows that ask for none of these stay on the batched path; the others are sampled one row at a time here (they
are rare, and a row loop keeps each option simple and exact). Definitions follow OpenAI's API reference:

* penalties: `logit[t] -= frequency_penalty * count[t] + presence_penalty * (count[t] > 0)`, counting the tokens
  this request has generated so far;
* `logit_bias`: added to the logits of the given token ids before sampling;
* log-probabilities are those of the model's own distribution (log-softmax of the raw logits, before penalties,
  bias and temperature), for the chosen token and the `top_logprobs` most likely ones;
* `seed`: the request samples with its own generator on the CPU, seeded once, so the same seed and the same
  request give the same tokens whatever else is in the batch and on any device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True, kw_only=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token id, logprob), most likely first


@dataclass(frozen=True, kw_only=True)
class RowOptions:
    temperature: float
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    logit_bias: tuple[tuple[int, float], ...]
    top_logprobs: int | None  # None: no logprobs; 0: the chosen token's only


def seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


@torch.inference_mode()
def sample_row(logits: torch.Tensor, opts: RowOptions, output_ids: Sequence[int],
               generator: torch.Generator | None, fallback: torch.Generator) -> tuple[int, TokenLogprob | None]:
    """One row of logits [vocab] to one token (and its logprobs when asked)."""
    raw = logits.float()
    adjusted = raw
    if output_ids and (opts.presence_penalty or opts.frequency_penalty):
        counts = torch.bincount(torch.tensor(list(output_ids), device=raw.device), minlength=raw.shape[0])
        counts = counts[: raw.shape[0]].to(raw.dtype)
        adjusted = adjusted - opts.frequency_penalty * counts - opts.presence_penalty * (counts > 0).to(raw.dtype)
    if opts.logit_bias:
        ids = torch.tensor([t for t, _ in opts.logit_bias], device=raw.device)
        bias = torch.tensor([b for _, b in opts.logit_bias], device=raw.device, dtype=raw.dtype)
        adjusted = adjusted.index_add(0, ids, bias)
    if opts.temperature <= 0:
        token = int(adjusted.argmax())
    else:
        probs = torch.softmax(adjusted / max(opts.temperature, 1e-5), dim=-1)
        sorted_p, order = probs.sort(descending=True)
        drop = (sorted_p.cumsum(dim=-1) - sorted_p) >= opts.top_p  # the first token always stays
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        if generator is not None:
            choice = torch.multinomial(sorted_p.cpu(), 1, generator=generator)
            token = int(order.cpu()[choice])
        else:
            gen = fallback if fallback.device == sorted_p.device else None
            token = int(order[torch.multinomial(sorted_p, 1, generator=gen)])
    if opts.top_logprobs is None:
        return token, None
    logp = torch.log_softmax(raw, dim=-1)
    top: tuple[tuple[int, float], ...] = ()
    if opts.top_logprobs > 0:
        values, idx = logp.topk(opts.top_logprobs)
        top = tuple((int(i), float(v)) for i, v in zip(idx.tolist(), values.tolist(), strict=True))
    return token, TokenLogprob(token_id=token, logprob=float(logp[token]), top=top)
