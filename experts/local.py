"""Local Hugging Face experts (masked-LM or causal-LM directories), loaded once per process."""

from __future__ import annotations

import contextlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads with the first local expert: a daemon that runs none never imports it
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

LOCAL_KINDS = ("masked-lm", "causal-lm")
_ARCHITECTURE_SUFFIXES = {
    "masked-lm": ("ForMaskedLM",),
    "causal-lm": ("ForCausalLM", "LMHeadModel"),
}


class ExpertError(ValueError):
    """An expert that cannot be loaded or used as asked."""


@contextlib.contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """No "Loading weights" / "Writing model shards" bars from transformers (they garble logs and our own bars)."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def check_model_dir(name: str, kind: str, uri: str | None) -> Path:
    """The model directory of a local expert, or an ExpertError that says what is wrong with it."""
    if kind not in LOCAL_KINDS:
        raise ExpertError(f"expert {name!r} is {kind!r}; only {' and '.join(LOCAL_KINDS)} experts run locally")
    if not uri:
        raise ExpertError(f"expert {name!r} ({kind}) needs the path of a local model directory as its uri")
    path = Path(uri).expanduser()
    if not path.exists():
        raise ExpertError(f"expert {name!r}: {uri} does not exist")
    config = path / "config.json"
    if not path.is_dir() or not config.is_file():
        raise ExpertError(f"expert {name!r}: {uri} is not a Hugging Face model directory (no config.json)")
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError) as exc:
        raise ExpertError(f"expert {name!r}: {config} is not a readable model config: {exc}") from None
    if architectures and not any(a.endswith(_ARCHITECTURE_SUFFIXES[kind]) for a in architectures):
        raise ExpertError(f"expert {name!r}: {uri} holds a {', '.join(architectures)}, not a {kind} model")
    return path


class LocalExpert:
    """A loaded model + tokenizer. Calls are serialised per expert (one forward at a time)."""

    def __init__(self, name: str, kind: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.name, self.kind, self.model, self.tokenizer = name, kind, model, tokenizer
        self._lock = threading.Lock()

    @classmethod
    def load(cls, name: str, kind: str, uri: str) -> LocalExpert:
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

        path = check_model_dir(name, kind, uri)
        loader = AutoModelForMaskedLM if kind == "masked-lm" else AutoModelForCausalLM
        try:
            with quiet_hf_progress():
                model = loader.from_pretrained(path)
                tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, KeyError) as exc:
            raise ExpertError(f"expert {name!r}: cannot load a {kind} model from {uri}: {exc}") from None
        if kind == "masked-lm" and tokenizer.mask_token_id is None:
            raise ExpertError(f"expert {name!r}: the tokenizer in {uri} has no mask token")
        model.eval()
        return cls(name, kind, model, tokenizer)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def losses(self, texts: Sequence[str]) -> list[float]:
        """MLM loss on the prompt-seeded mask (masked-LM) or mean token NLL (causal-LM), per text."""
        from experts.scoring import causal_nll, mlm_losses

        with self._lock:
            if self.kind == "masked-lm":
                return mlm_losses(self.model, self.tokenizer, texts)
            return causal_nll(self.model, self.tokenizer, texts)

    def infer(self, prompt: str, max_new_tokens: int = 32) -> dict[str, Any]:
        """Fill-mask (masked-LM: top-5 per mask + filled text) or greedy generation (causal-LM)."""
        import torch

        if not prompt.strip():
            raise ExpertError("the prompt is empty")
        with self._lock, torch.no_grad():
            if self.kind == "masked-lm":
                return self._fill_mask(prompt)
            return self._generate(prompt, max_new_tokens)

    def _window(self) -> int:
        limit = getattr(self.model.config, "max_position_embeddings", None) or 512
        return min(int(limit), int(getattr(self.tokenizer, "model_max_length", limit) or limit), 512)

    def _fill_mask(self, prompt: str) -> dict[str, Any]:
        mask = self.tokenizer.mask_token
        text = prompt.replace("[MASK]", mask)
        if mask not in text:  # no mask given: predict the last word
            head, _, _ = text.rstrip().rpartition(" ")
            text = f"{head} {mask}" if head else mask
        batch = self.tokenizer(text, truncation=True, max_length=self._window(), return_tensors="pt")
        ids = batch["input_ids"][0]
        positions = (ids == self.tokenizer.mask_token_id).nonzero().flatten().tolist()
        if not positions:
            raise ExpertError(f"the mask lies beyond this expert's {self._window()}-token window")
        import torch

        logits = self.model(**batch).logits[0]
        masks, filled = [], text
        for position in positions:
            top = torch.topk(logits[position].float().softmax(-1), 5)
            tokens = [self._token_text(int(i)) for i in top.indices]
            masks.append([{"token": t, "score": round(float(s), 4)} for t, s in zip(tokens, top.values, strict=True)])
            filled = filled.replace(mask, tokens[0], 1)
        return {"kind": "fill-mask", "masks": masks, "text": filled, "input": text}

    def _token_text(self, token_id: int) -> str:
        token = self.tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(token, str) and token.startswith("##"):
            return token[2:]
        return str(self.tokenizer.decode([token_id])).strip()

    def stream(self, prompt: str, max_new_tokens: int) -> tuple[Iterator[str], Generated]:
        """Greedy generation as an iterator of text pieces (transformers' ``TextIteratorStreamer``).

        The returned ``Generated`` is complete once the iterator is exhausted. The expert's lock is held
        from the first ``next`` until the generation thread ends (also when the consumer stops early).
        """
        from transformers import GenerationMixin, TextIteratorStreamer

        if self.kind != "causal-lm" or not isinstance(self.model, GenerationMixin):
            raise ExpertError(f"expert {self.name!r} is a {self.kind} model; only causal-LM experts generate text")
        if not prompt.strip():
            raise ExpertError("the prompt is empty")
        batch = self.tokenizer(prompt, truncation=True, max_length=self._window(), return_tensors="pt")
        budget = max(1, min(max_new_tokens, self._window()))
        result = Generated(prompt_tokens=int(batch["input_ids"].shape[1]), max_new_tokens=budget)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id

        import torch

        def pieces() -> Iterator[str]:
            with self._lock:
                streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
                outputs: list[torch.Tensor] = []

                def run() -> None:
                    with torch.no_grad():
                        outputs.append(self.model.generate(  # type: ignore[operator]
                            **batch, max_new_tokens=budget, do_sample=False, pad_token_id=pad, streamer=streamer))

                thread = threading.Thread(target=run, name=f"generate-{self.name}", daemon=True)
                thread.start()
                try:
                    for piece in streamer:
                        if piece:
                            result.text += piece
                            yield piece
                finally:
                    thread.join()
                if outputs:
                    result.completion_tokens = int(outputs[0].shape[1] - batch["input_ids"].shape[1])

        return pieces(), result

    def complete(self, prompt: str, max_new_tokens: int) -> Generated:
        """Greedy generation of up to ``max_new_tokens`` tokens after ``prompt`` (causal-LM only)."""
        iterator, result = self.stream(prompt, max_new_tokens)
        for _ in iterator:
            pass
        return result

    def _generate(self, prompt: str, max_new_tokens: int) -> dict[str, Any]:
        from transformers import GenerationMixin

        if not isinstance(self.model, GenerationMixin):
            raise ExpertError(f"expert {self.name!r}: its {type(self.model).__name__} cannot generate text")
        batch = self.tokenizer(prompt, truncation=True, max_length=self._window(), return_tensors="pt")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        # generate()'s self-type is transformers' GenerativePreTrainedModel protocol, written for the ty checker;
        # mypy does not match it against a PreTrainedModel narrowed to GenerationMixin.
        out = self.model.generate(**batch, max_new_tokens=max_new_tokens,  # type: ignore[misc, unused-ignore]
                                  do_sample=False, pad_token_id=pad)
        new = out[0, batch["input_ids"].shape[1] :]
        return {"kind": "generation", "text": self.tokenizer.decode(new, skip_special_tokens=True),
                "tokens": int(new.numel())}


@dataclass
class Generated:
    """What a causal-LM generation produced: its text (filled in as it streams) and token counts."""

    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_new_tokens: int = 0

    @property
    def finish_reason(self) -> str:
        """OpenAI's: ``length`` when the token budget ran out, else ``stop``."""
        return "length" if self.completion_tokens >= self.max_new_tokens else "stop"


def chat_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]]) -> str:
    """The model's chat template applied to ``messages``, or ``role: content`` lines ending in ``assistant:``."""
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                                 add_generation_prompt=True)
        if isinstance(rendered, str):
            return rendered
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join([*lines, "assistant:"])


class ExpertCache:
    """A thread-safe LRU of loaded experts keyed by (name, uri, version); each key loads once.

    Concurrent requests for the same key wait for the one load in progress instead of loading twice.
    """

    def __init__(self, capacity: int = 8) -> None:
        self._capacity = max(1, capacity)
        self._items: OrderedDict[tuple[str, str, int], LocalExpert] = OrderedDict()
        self._loading: dict[tuple[str, str, int], threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, name: str, kind: str, uri: str, version: int = 1) -> LocalExpert:
        key = (name, uri, version)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            try:
                expert = LocalExpert.load(name, kind, uri)
            except BaseException:
                with self._lock:
                    self._loading.pop(key, None)
                raise
            with self._lock:
                self._items[key] = expert
                self._loading.pop(key, None)
                while len(self._items) > self._capacity:
                    self._items.popitem(last=False)
            return expert

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
