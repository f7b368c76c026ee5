"""The request lists `infermesh bench` sends: random lengths, a named fixed workload, or a dataset file.

A fixed workload is what makes figures comparable across systems and runs: `peers-64` is the one
issue 17 measured vLLM, transformers and infermesh on, reproduced draw for draw.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True, frozen=True)
class BenchRequest:
    """One request: prompt token ids (or text) and how many tokens to generate (EOS ignored)."""

    prompt: list[int]
    max_tokens: int
    # A text prompt, tokenized by the server; `prompt` is then empty.
    text: str | None = None


PEERS_64_TOTALS = (14_946, 4_444)  # prompt tokens, output tokens


def peers_64() -> list[BenchRequest]:
    """64 requests drawn from random.Random(0) in the order prompt_len, output_len, prompt ids.

    The draw order and ranges are the workload's definition; the totals check guards them.
    """
    rng = random.Random(0)
    requests = []
    for _ in range(64):
        prompt_len = rng.randint(32, 512)
        output_len = rng.randint(16, 128)
        prompt = [rng.randint(3, 31999) for _ in range(prompt_len)]
        requests.append(BenchRequest(prompt, output_len))
    totals = (sum(len(r.prompt) for r in requests), sum(r.max_tokens for r in requests))
    assert totals == PEERS_64_TOTALS, f"peers-64 drew {totals}, expected {PEERS_64_TOTALS}"
    return requests


WORKLOADS = {"peers-64": peers_64}


def load_dataset(path: Path) -> list[BenchRequest]:
    """Reads JSON lines {"prompt_token_ids": [int, ...], "output_len": int} or {"prompt": "text",
    "output_len": int} (both kinds may be mixed); blank lines are skipped."""
    requests = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read dataset {path}: {exc}") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise ValueError(f'{where}: expected an object {{"prompt_token_ids": [...], "output_len": N}}')
        output_len = record.get("output_len")
        if not _is_token(output_len) or output_len < 1:
            raise ValueError(f"{where}: output_len must be an integer >= 1")
        if ("prompt" in record) == ("prompt_token_ids" in record):
            raise ValueError(f'{where}: give exactly one of "prompt" (text) and "prompt_token_ids"')
        if "prompt" in record:
            text = record["prompt"]
            if not isinstance(text, str) or not text:
                raise ValueError(f"{where}: prompt must be non-empty text")
            requests.append(BenchRequest([], output_len, text))
            continue
        prompt = record["prompt_token_ids"]
        if not isinstance(prompt, list) or not prompt or not all(_is_token(t) for t in prompt):
            raise ValueError(f"{where}: prompt_token_ids must be a non-empty list of token ids >= 0")
        requests.append(BenchRequest(prompt, output_len))
    if not requests:
        raise ValueError(f"dataset {path} holds no requests")
    return requests


def random_workload(
    num_requests: int,
    prompt_len: tuple[int, int],
    output_len: tuple[int, int],
    shared_prefix_len: int,
    vocab_size: int,
    max_model_len: int,
    seed: int,
) -> list[BenchRequest]:
    """Random lengths in the given ranges; every prompt may start with one shared prefix."""
    # Lengths and token ids come from separate streams so every model sees the same lengths.
    rng = random.Random(seed)
    token_rng = random.Random(seed + 1)
    prefix = [token_rng.randrange(vocab_size) for _ in range(shared_prefix_len)]
    requests = []
    for _ in range(num_requests):
        length = rng.randint(*prompt_len)
        out = rng.randint(*output_len)
        if max_model_len and length + out > max_model_len:
            length = max(1, max_model_len - out)
        tail = [token_rng.randrange(vocab_size) for _ in range(max(0, length - len(prefix)))]
        requests.append(BenchRequest((prefix + tail)[: max(length, len(prefix))], out))
    return requests


def fit_to_vocab(requests: list[BenchRequest], vocab_size: int) -> tuple[list[BenchRequest], bool]:
    """Folds ids a smaller model does not know into its vocabulary (lengths, hence work, unchanged)."""
    if all(t < vocab_size for r in requests for t in r.prompt):
        return requests, False
    return [BenchRequest([t % vocab_size for t in r.prompt], r.max_tokens, r.text) for r in requests], True


def check_fits(requests: list[BenchRequest], max_model_len: int) -> None:
    """Refuses a fixed workload the model cannot hold, rather than silently changing it."""
    if not max_model_len:
        return
    for index, request in enumerate(requests):
        # A text prompt's length is the server's to count.
        if request.text is None and len(request.prompt) + request.max_tokens > max_model_len:
            raise ValueError(
                f"request {index} needs {len(request.prompt) + request.max_tokens} tokens but the "
                f"model serves at most max_model_len={max_model_len}; raise max_model_len"
            )


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
