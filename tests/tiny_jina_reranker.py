"""A tiny jina-reranker-v3 (`JinaForRanking`) with random weights, for tests and benchmarks.

The checkpoint has the real one's layout: a Qwen3 decoder under `model.`, the two-layer projector under
`projector.0` / `projector.2` (what vLLM's `JinaForRanking` loads), `architectures: ["JinaForRanking"]`, and a
byte-level BPE tokenizer (the Qwen family's kind, trained here on the MiniLM vocabulary's words) whose special tokens
sit at Qwen3's ids: `<|endoftext|>` 151643, `<|im_start|>` 151644, `<|im_end|>` 151645, and jina's
`<|embed_token|>` 151670 and `<|rerank_token|>` 151671, the ids vLLM's pooler looks for. The vocabulary between the
trained tokens and the special ones is filler, so the embedding table has the real model's rows (151672) at a hidden
size of 64.
"""

from __future__ import annotations

import functools
from pathlib import Path

from scoring.config.schema import EMBEDDED_MODEL, resolve_model_path

EMBED_TOKEN_ID = 151670
RERANK_TOKEN_ID = 151671
QWEN3_SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
JINA_SPECIALS = {"<|embed_token|>": EMBED_TOKEN_ID, "<|rerank_token|>": RERANK_TOKEN_ID}
VOCAB_SIZE = RERANK_TOKEN_ID + 1
PROJECTOR_DIM = 512  # vLLM's JinaForRanking sets embedding_size to 512 whatever the config says


@functools.lru_cache(maxsize=None)
def _trained_bpe(trained: int) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """A byte-level BPE trained on the MiniLM vocabulary's words (as written and title-cased, and the label words
    so that they are single tokens): its tokens in id order and its merges. Trained once a process."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    words = (Path(resolve_model_path(EMBEDDED_MODEL)) / "vocab.txt").read_text(encoding="utf-8").split()
    words = [w for w in words if not w.startswith(("[", "##"))]
    corpus = [" ".join(words[i:i + 64]) for i in range(0, len(words), 64)]
    corpus += [line.title() for line in corpus] + ["Yes No yes no"] * 200
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=trained,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokens = tuple(token for token, _ in sorted(bpe.get_vocab().items(), key=lambda item: item[1]))
    merges = tuple(tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
                   for m in json.loads(bpe.to_str())["model"]["merges"])
    return tokens, merges


def byte_level_tokenizer(specials: dict[str, int], vocab_size: int, model_max_length: int, trained: int = 2000,
                         **tokens: str):
    """A byte-level BPE tokenizer (nothing added around a text, as Qwen's; `_trained_bpe`) whose `specials` have
    the given ids; the trained tokens take the other ids in order, and ids left over up to `vocab_size` are filler
    entries `<unused_N>`. `tokens`: `bos_token`, `eos_token`, ... by content."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    learned, merges = _trained_bpe(trained)
    free = (i for i in range(vocab_size) if i not in set(specials.values()))
    vocab = {token: next(free) for token in learned} | dict(specials)
    taken = set(vocab.values())
    vocab |= {f"<unused_{i}>": i for i in range(vocab_size) if i not in taken}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(specials))  # they exist in the vocabulary, so they keep its ids
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **tokens)


def build_tiny_jina_reranker(
    path: str | Path,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    max_positions: int = 2048,
    seed: int = 0,
) -> Path:
    """Save a random JinaForRanking checkpoint (config, safetensors, tokenizer) to `path`; returns `path`."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen3Config, Qwen3Model

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_level_tokenizer(QWEN3_SPECIALS | JINA_SPECIALS, VOCAB_SIZE, max_positions,
                                     eos_token="<|im_end|>", pad_token="<|endoftext|>")
    for token, token_id in JINA_SPECIALS.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id
    config = Qwen3Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=hidden_size // 64,
        num_key_value_heads=1,
        head_dim=64,  # vLLM's CPU attention kernels reject smaller heads
        max_position_embeddings=max_positions,
        initializer_range=0.2,  # wide enough weights that scores differ clearly from document to document
        tie_word_embeddings=True,
        bos_token_id=QWEN3_SPECIALS["<|endoftext|>"],
        eos_token_id=QWEN3_SPECIALS["<|im_end|>"],
        pad_token_id=QWEN3_SPECIALS["<|endoftext|>"],
    )
    config.architectures = ["JinaForRanking"]
    config.embedding_size = PROJECTOR_DIM
    torch.manual_seed(seed)
    decoder = Qwen3Model(config).to(torch.float32)
    projector = torch.nn.Sequential(
        torch.nn.Linear(hidden_size, hidden_size // 2, bias=False),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden_size // 2, PROJECTOR_DIM, bias=False),
    )
    weights = {f"model.{k}": v.contiguous() for k, v in decoder.state_dict().items()}
    weights |= {f"projector.{k}": v.contiguous() for k, v in projector.state_dict().items()}
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_reference(path: str | Path):
    """transformers' Qwen3Model and the projector (torch) from a checkpoint written by `build_tiny_jina_reranker`:
    the model's documented computation, outside vLLM."""
    import torch
    from safetensors.torch import load_file
    from transformers import Qwen3Config, Qwen3Model

    path = Path(path)
    config = Qwen3Config.from_pretrained(path)
    weights = load_file(str(path / "model.safetensors"))
    decoder = Qwen3Model(config)
    decoder.load_state_dict({k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")})
    first, second = weights["projector.0.weight"], weights["projector.2.weight"]
    projector = torch.nn.Sequential(
        torch.nn.Linear(first.shape[1], first.shape[0], bias=False),
        torch.nn.ReLU(),
        torch.nn.Linear(second.shape[1], second.shape[0], bias=False),
    )
    projector.load_state_dict({"0.weight": first, "2.weight": second})
    return decoder.eval(), projector.eval()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a tiny random jina-reranker-v3 (JinaForRanking).")
    parser.add_argument("path", help="directory to write (config.json, weights, tokenizer)")
    parser.add_argument("--max-positions", type=int, default=8192, help="its max_position_embeddings")
    args = parser.parse_args()
    print(build_tiny_jina_reranker(args.path, max_positions=args.max_positions))
