"""Which node pool, and which replica of it, takes the next request.

Pools are tried in order of preference (lowest `priority` first). A pool takes the
request while its queue is below `target_queue_depth` per replica; once every pool
is past that, the request goes to the least loaded one relative to its size, so an
overloaded preferred pool spills over to the next instead of queueing without bound.

Within the pool, replicas are ordered by one of two policies (`RoutingPolicy`):

- `least-loaded`: fewest requests in flight first, ties in random order.
- `prefix-aware` (the default): requests whose prompts begin the same way go to the
  same replica, whose KV cache then already holds that prefix (vLLM's prefix cache
  skips its prefill). It is consistent hashing with bounded load: the prefix's key
  ranks the replicas by rendezvous hashing (the same key always ranks them the same
  way, and a replica joining or leaving moves only the keys it wins or held), and the
  first replica in that order whose load is under `ceil(load_factor × mean load)` takes
  the request. A popular prefix therefore overflows to the next replica in its own
  order instead of piling up on one; a request with no usable prefix is least-loaded.

The key is made of the prompt's first characters, not its tokens: the front door does
not tokenize (that stays in the engines), and a shared system prompt or few-shot block
is a shared character prefix just the same. Ray Serve LLM's prefix-aware router matches
characters too.

Pure: the caller passes the load it knows (engine stats plus its own in-flight
counts) and the random source; no Ray imports, no clock.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelfleet_serving.config import RoutingPolicy

__all__ = ["RoutingPolicy", "choose_pool", "order_replicas", "prompt_prefix"]


@dataclass(frozen=True)
class PoolLoad:
    """What the router knows of one pool right now."""

    queued: float
    """Requests waiting in the pool's engines (not yet running)."""
    replicas: int
    """Replicas that are up; a pool with none is skipped while another can serve."""


@dataclass(frozen=True)
class PoolChoice:
    """A pool's name and its place in the preference order (0 = most preferred)."""

    name: str
    priority: int


def choose_pool(
    pools: Sequence[PoolChoice],
    loads: Mapping[str, PoolLoad],
    target_queue_depth: float,
) -> str:
    """Return the name of the pool that should take the next request.

    A pool missing from `loads` is treated as idle with one replica: right after start
    no stats have arrived yet, and the preferred pool must still get the traffic.
    """
    if not pools:
        raise ValueError("no pools to choose from")
    ordered = sorted(pools, key=lambda p: p.priority)

    def load(pool: PoolChoice) -> PoolLoad:
        return loads.get(pool.name, PoolLoad(queued=0, replicas=1))

    up = [p for p in ordered if load(p).replicas > 0] or ordered
    for pool in up:
        current = load(pool)
        if current.queued < target_queue_depth * max(current.replicas, 1):
            return pool.name
    # Every pool is past its target: the least queued per replica; ties keep preference.
    return min(up, key=lambda p: load(p).queued / max(load(p).replicas, 1)).name


# The prompt characters that make the prefix key: about 64 tokens of English, four
# of vLLM's 16-token KV blocks, enough to tell a system prompt or few-shot block apart
# from another while short enough that prompts sharing one also share the whole key.
PREFIX_KEY_CHARS = 256
# Prompts shorter than this carry no prefix worth steering for: least-loaded.
MIN_PREFIX_CHARS = 32
# A replica may take up to this multiple of the mean load before its prefixes spill
# to the next replica in their order (Mirrokni et al.'s 1 + epsilon).
LOAD_FACTOR = 1.25


def prompt_prefix(kind: str, body: Mapping[str, Any]) -> str:
    """The first `PREFIX_KEY_CHARS` characters of what the engine will see first.

    For chat, each message's role and text in order (the chat template only adds the
    same markers around them); for completions, the prompt (the first one of a list).
    Anything not text (token ids, images) contributes its JSON-ish `str()`, which is
    still the same for the same input.
    """
    parts: list[str] = []
    size = 0
    if kind == "chat":
        for message in body.get("messages") or ():
            if not isinstance(message, Mapping):
                break
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(
                    str(p.get("text", p)) if isinstance(p, Mapping) else str(p) for p in content
                )
            piece = f"{message.get('role')}\x1f{content or ''}\x1e"
            parts.append(piece)
            size += len(piece)
            if size >= PREFIX_KEY_CHARS:
                break
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt = prompt[0] if prompt else ""
        parts.append(prompt if isinstance(prompt, str) else str(prompt))
    return "".join(parts)[:PREFIX_KEY_CHARS]


def _score(key: str, replica: str) -> bytes:
    return hashlib.blake2b(f"{key}\x00{replica}".encode(), digest_size=8).digest()


def order_replicas(
    replicas: Sequence[str],
    loads: Mapping[str, int],
    *,
    policy: RoutingPolicy,
    prefix: str,
    rng: random.Random,
    load_factor: float = LOAD_FACTOR,
) -> list[str]:
    """The replicas in the order to try them for one request (first = chosen).

    `loads` are the requests in flight at each replica (missing = 0). With the
    prefix-aware policy and a prefix of at least `MIN_PREFIX_CHARS`, the first is the
    highest-ranked replica for the prefix whose load stays within the bound; the rest
    follow least loaded first, as fallbacks when the first cannot be reached.
    """
    shuffled = list(replicas)
    rng.shuffle(shuffled)
    by_load = sorted(shuffled, key=lambda r: loads.get(r, 0))
    if policy is RoutingPolicy.LEAST_LOADED or len(prefix) < MIN_PREFIX_CHARS or not by_load:
        return by_load
    total = sum(loads.get(r, 0) for r in replicas) + 1  # this request included
    bound = max(1, math.ceil(load_factor * total / len(replicas)))
    ranked = sorted(replicas, key=lambda r: _score(prefix, r), reverse=True)
    for replica in ranked:
        if loads.get(replica, 0) + 1 <= bound:
            return [replica] + [r for r in by_load if r != replica]
    return by_load
