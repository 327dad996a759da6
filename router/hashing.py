"""One stable hash for every deterministic sample or split.

Label sampling, the training holdout, the validation split, the benchmark's train/test split and
the demo corpus all pick members by a number in [0, 1) derived from a text. Each draws with its
own salt, listed once in :class:`Salt`, so membership of one never implies membership of another:
with a shared unsalted hash, every prompt sampled for labelling at share 0.1 also had a key
below the validation share 0.1, and the router validated on all of its computed-loss rows.
"""

from __future__ import annotations

import enum
import hashlib


@enum.unique
class Salt(enum.StrEnum):
    """Every salt in use; ``@unique`` refuses two samples that would draw the same numbers."""

    LABEL_SAMPLE = "label-sample"  # daemon: which routed prompts get their losses computed
    HOLDOUT = "holdout"  # training job: prompts kept out of training to compare routers (keyed by prompt hash)
    VALIDATION = "validation"  # router training: early-stopping split of the training prompts
    BENCH_TEST = "bench-test"  # quality benchmark: a single-file dataset's test share
    CORPUS_SPLIT = "split"  # demo corpus: expert-train / traffic / held-out snippets
    CORPUS_KEEP = "keep"  # demo corpus: which snippets of a domain are kept under the cap
    EXPLORE = "explore"  # daemon: the exploration policy's draw for one request (keyed by request id and prompt)
    OPE_FOLD = "ope-fold"  # off-policy evaluation: the cross-fitting fold of a logged prompt (by prompt hash)
    SHADOW = "shadow"  # daemon: which live requests the shadow routers also route (keyed by request id)


def stable_fraction(text: str, *, salt: Salt) -> float:
    """A number in [0, 1) fixed by ``salt`` and ``text``: the first 8 bytes of sha256("salt:text") / 2^64."""
    digest = hashlib.sha256(f"{Salt(salt).value}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64
