"""Open-vocabulary classifier: CLIP text embeddings of class names, plus a learnable background.

Each class name is written into every prompt template of a set, encoded by CLIP's text tower,
L2-normalised, averaged over templates and normalised again. Embeddings are cached per class name,
so a vocabulary costs text-encoder time only once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .prompts import get_templates

# open_clip is imported where it is used: its import takes seconds (torchvision, torch._dynamo), and a job
# that stops before its vocabulary is read (e.g. on missing weights) should not wait for it.
if TYPE_CHECKING:
    from open_clip.model import CLIP


def check_vocabulary(vocabulary: Sequence[str]) -> list[str]:
    """Validate a list of class names: non-empty, no blank or duplicate names. Returns it as a list."""
    if isinstance(vocabulary, str):
        raise TypeError("vocabulary must be a list of class names, not a single string")
    names = list(vocabulary)
    if not names:
        raise ValueError("vocabulary is empty: give at least one class name")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"vocabulary entry {i} is blank or not a string: {name!r}")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(f"vocabulary has a duplicate name {name!r} (entries {seen[name]} and {i})")
        seen[name] = i
    return names


class TextClassifier(nn.Module):
    """Class embeddings ``[C + 1, D]`` (background last) for a vocabulary.

    ``text_encoder`` is an open_clip ``CLIP`` whose vision tower has been removed; its text
    weights keep open_clip's names.
    """

    def __init__(self, clip_model: CLIP, template_set: str = "vild", batch_size: int = 1024):
        super().__init__()
        if hasattr(clip_model, "visual"):
            del clip_model.visual
        self.text_encoder = clip_model
        from open_clip.tokenizer import SimpleTokenizer

        self.templates = get_templates(template_set)
        self.tokenizer = SimpleTokenizer(context_length=clip_model.context_length)
        self.batch_size = batch_size
        # Official SAN sizes this by the text width, which only works when it equals embed_dim.
        dim = clip_model.text_projection.shape[1]
        self.bg_embed = nn.Parameter(torch.randn(1, dim) * dim**-0.5)
        self._cache: dict[str, torch.Tensor] = {}
        self.register_load_state_dict_post_hook(lambda module, _keys: module.clear_cache())

    @property
    def logit_scale(self) -> torch.Tensor:
        """Raw (log) logit scale; logits are multiplied by its ``exp()``."""
        return self.text_encoder.logit_scale

    def set_template_set(self, name: str) -> None:
        """Use another prompt template set (and forget embeddings made with the old one)."""
        self.templates = get_templates(name)
        self.clear_cache()

    def clear_cache(self) -> None:
        """Forget cached class embeddings (done automatically when weights are loaded)."""
        self._cache.clear()

    def train(self, mode: bool = True) -> TextClassifier:
        """The classifier is frozen: it always stays in eval mode, as in SAN."""
        return super().train(False)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Normalised text embeddings ``[len(prompts), D]`` of literal prompts.

        Prompts are encoded in batches of similar token length, each cut after its longest prompt's
        end token (see :meth:`encode_tokens`). A prompt longer than CLIP's context raises ``ValueError``
        (open_clip would cut it silently).
        """
        device = self.text_encoder.token_embedding.weight.device
        context = self.text_encoder.context_length
        tokens = self.tokenizer(list(prompts), context_length=context + 1)  # one more: to see what would be cut
        cut = (tokens.argmax(dim=-1) >= context).nonzero().flatten().tolist()  # (the end token has the largest id)
        if cut:
            raise ValueError(f"prompt {prompts[cut[0]]!r} has more than the {context} tokens CLIP reads; shorten it")
        tokens = tokens[:, :context].to(device)
        order = tokens.argmax(dim=-1).argsort()
        projection = self.text_encoder.text_projection
        out = torch.empty(len(prompts), projection.shape[1], device=device, dtype=projection.dtype)
        for start in range(0, len(prompts), self.batch_size):
            index = order[start : start + self.batch_size]
            out[index] = self.encode_tokens(tokens[index]).to(out.dtype)
        return out

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """CLIP's ``encode_text(tokens, normalize=True)`` for token ids ``[N, context]`` -> ``[N, D]``.

        Written out instead of calling open_clip's ``encode_text`` so that the sequence can be cut
        after the last end token: under the causal mask no position attends to later ones, so the
        end-token features are unchanged, and the usual 77-token context shrinks to ~15 (5x faster).
        """
        clip = self.text_encoder
        if clip.text_pool_type != "argmax":
            raise ValueError(f"text pooling {clip.text_pool_type!r} is not supported (CLIP uses 'argmax')")
        eot = tokens.argmax(dim=-1)  # the end token has the largest id
        length = int(eot.max()) + 1
        dtype = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(tokens[:, :length]).to(dtype) + clip.positional_embedding[:length].to(dtype)
        x = clip.transformer(x, attn_mask=clip.attn_mask[:length, :length])
        x = clip.ln_final(x)[torch.arange(len(tokens), device=tokens.device), eot] @ clip.text_projection
        return F.normalize(x, dim=-1)

    @torch.no_grad()
    def class_embeddings(self, names: Sequence[str]) -> torch.Tensor:
        """Template-averaged, re-normalised embeddings ``[len(names), D]``; cached per name."""
        missing = [n for n in dict.fromkeys(names) if n not in self._cache]
        if missing:
            prompts = [t.format(name) for t in self.templates for name in missing]
            per_template = self.encode_prompts(prompts).reshape(len(self.templates), len(missing), -1)
            mean = per_template.mean(dim=0)
            mean = mean / mean.norm(dim=-1, keepdim=True)
            self._cache.update(zip(missing, mean, strict=True))
        return torch.stack([self._cache[n] for n in names])

    def forward(self, vocabulary: Sequence[str]) -> torch.Tensor:
        """Classifier weights ``[C + 1, D]``: the vocabulary's rows then the background, all unit norm."""
        names = check_vocabulary(vocabulary)
        rows = self.class_embeddings(names).to(self.bg_embed)
        return F.normalize(torch.cat([rows, self.bg_embed]), p=2, dim=-1)
