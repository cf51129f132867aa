"""Query embeddings of a ColBERT checkpoint trained not to attend to its query expansion.

ColBERT pads queries with `[MASK]` tokens and gives them embeddings of their own (they score like query tokens).
Most checkpoints (Stanford's `attend_to_mask_tokens: false`, PyLate's `attend_to_expansion_tokens: false`, the
default of both) encode queries with an attention mask of 0 on those tokens: no token attends to them, while they
attend to the query's tokens. vLLM's forward pass takes no attention mask (every token of a sequence attends to
every other), so these queries are encoded here instead, by the transformers model of the same weights with the
mask, then the checkpoint's projection and L2 normalisation, as PyLate does. Documents, and queries of checkpoints
that attend to their expansion, go through vLLM. Queries are short and cached by the scorer, so this forward pass
is a small share of the work.
No Ray or vLLM import here.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Sequence

import numpy as np

from scoring.late_interaction.formats import DenseLayer
from scoring.late_interaction.tokens import QueryTokens


class MaskedExpansionQueries:
    def __init__(self, path: Path, projection: Sequence[DenseLayer], dtype: str = "float32", device: str = "auto"):
        import torch
        from transformers import AutoModel

        self._torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        self._dtype = getattr(torch, dtype)
        # sdpa keeps every position (FlashAttention-2 would drop the masked ones and their embeddings)
        self._model = AutoModel.from_pretrained(str(path), dtype=self._dtype, attn_implementation="sdpa")
        self._model = self._model.to(self._device).eval()
        self._token_types = "token_type_ids" in inspect.signature(self._model.forward).parameters
        self._projection = [self._load_dense(layer) for layer in projection]

    def encode(self, queries: Sequence[QueryTokens]) -> list[np.ndarray]:
        """[len(ids), d] float32 per query: normalised projected token embeddings, expansion tokens included."""
        if not queries:
            return []
        torch = self._torch
        width = max(len(q.ids) for q in queries)
        ids = torch.zeros((len(queries), width), dtype=torch.long)
        mask = torch.zeros((len(queries), width), dtype=torch.long)
        for row, query in enumerate(queries):
            ids[row, : len(query.ids)] = torch.tensor(query.ids)
            mask[row, : query.attended] = 1
        inputs = {"input_ids": ids, "attention_mask": mask}
        if self._token_types:
            inputs["token_type_ids"] = torch.zeros_like(ids)
        with torch.inference_mode():
            hidden = self._model(**{k: v.to(self._device) for k, v in inputs.items()}).last_hidden_state.float()
            for weight, bias, activation in self._projection:
                hidden = activation(torch.nn.functional.linear(hidden, weight, bias))
            hidden = torch.nn.functional.normalize(hidden, p=2, dim=-1).cpu().numpy()
        return [hidden[row, : len(query.ids)] for row, query in enumerate(queries)]

    def _load_dense(self, layer: DenseLayer):
        torch = self._torch
        if layer.weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(layer.weights))
        else:
            state = torch.load(layer.weights, map_location="cpu", weights_only=True)
        key = next(k for k in ("linear.weight", "weight", "dense.weight") if k in state)
        bias = state.get(key.replace("weight", "bias")) if layer.bias else None
        activation = torch.tanh if layer.activation.endswith("Tanh") else (lambda x: x)
        to = {"device": self._device, "dtype": torch.float32}
        return state[key].to(**to), None if bias is None else bias.to(**to), activation
