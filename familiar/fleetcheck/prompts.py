"""Pure: the prompts of a bench: synthetic text of about N tokens, or a prompts file.

Synthetic prompts are common English words, most of them one token in every tokenizer
we know, drawn by a seeded generator: the same run asks the same prompts, and every
request's prompt is different from the start (no shared prefix for a cache to reuse).
The server's own count (``usage.prompt_tokens``, chat template included) is what the
results report as ``input_tokens_mean``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from familiar.errors import ConfigError

WORDS = (
    "the of and to in is was for on that with as by at from his her they this had not are"
    " but one all were we when there can an which their said if do will each about how up"
    " out them then she many some so these would other into has more two like him see time"
    " could no make than first been its who now people my made over did down only way find"
    " use may water long little very after words called just where most know get through"
    " back much before go good new write our used me man too any day same right look think"
    " also around another came come work three word must because does part even place well"
    " such here take why things help put years different away again off went old number"
    " great tell men say small every found still between name should home big give air"
    " line set own under read last never us left end along while might next sound below saw"
    " something thought both few those always looked show large often together asked house"
    " world going want school important until form food keep children feet land side"
    " without boy once animals life enough took sometimes four head above kind began almost"
    " live page got earth need far hand high year mother light parts country father let"
    " night following picture being study second eyes soon times story boys since white"
    " days ever paper hard near sentence better best across during today others however"
    " sure means knew try told young miles sun ways thing whole hear example heard several"
    " change answer room sea against top turned learn point city play toward five using"
    " himself usually money seen car morning"
).split()


def synthetic_prompt(index: int, tokens: int, *, seed: int = 0) -> str:
    """About ``tokens`` tokens of text (one word each), different for every ``index``."""
    if tokens < 1:
        raise ValueError("a prompt needs at least one token")
    rng = random.Random(seed * 1_000_003 + index)
    head = f"{index}:"
    words = [rng.choice(WORDS) for _ in range(max(tokens - 2, 1))]
    return " ".join([head, *words])


def load_prompts(path: Path) -> tuple[str, ...]:
    """The prompts of a file: JSON Lines (``{"prompt": "..."}`` or a JSON string per line)
    when the name ends in ``.jsonl``, else one prompt per non-empty line. ``ConfigError``
    (exit 2) when it cannot be read or holds none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--prompts: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--prompts: cannot read {path}: {exc}") from None
    prompts: list[str] = []
    jsonl = path.suffix.lower() == ".jsonl"
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if not jsonl:
            prompts.append(line)
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise ConfigError(f"--prompts: {path} line {n} is not JSON") from None
        prompt = item.get("prompt") if isinstance(item, dict) else item
        if not isinstance(prompt, str) or not prompt:
            raise ConfigError(
                f'--prompts: {path} line {n}: expected {{"prompt": "..."}} or a JSON string'
            )
        prompts.append(prompt)
    if not prompts:
        raise ConfigError(f"--prompts: {path} holds no prompt")
    return tuple(prompts)
