"""Tiny CausalLM rerankers with random weights in their families' on-disk formats, for tests and benchmarks:
bge-reranker-v2-gemma's (`GemmaForCausalLM`, `<pad>` 0 / `<eos>` 1 / `<bos>` 2 as Gemma's tokenizer has them) and
mxbai-rerank-v2's (`Qwen2ForCausalLM` with Qwen's chat tokens). Byte-level BPE tokenizers trained here (see
`tests/tiny_jina_reranker.py`); "Yes", "1" and "0" are single tokens, as in the real tokenizers.
"""

from __future__ import annotations

from pathlib import Path

from tests.tiny_jina_reranker import byte_level_tokenizer

VOCAB_SIZE = 2048


def _save(path: str | Path, tokenizer, config, model_class, seed: int) -> Path:
    import torch

    path = Path(path)
    torch.manual_seed(seed)
    model_class(config).to(torch.float32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_gemma_reranker(path: str | Path, *, max_positions: int = 1024, seed: int = 0) -> Path:
    """A random GemmaForCausalLM (bge-reranker-v2-gemma's architecture) with a Gemma-style tokenizer."""
    from transformers import GemmaConfig, GemmaForCausalLM

    specials = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    tokenizer = byte_level_tokenizer(specials, VOCAB_SIZE, max_positions, bos_token="<bos>", eos_token="<eos>",
                                     pad_token="<pad>", unk_token="<unk>")
    config = GemmaConfig(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=1, num_key_value_heads=1, head_dim=64,  # vLLM's CPU minimum head
                         max_position_embeddings=max_positions, initializer_range=0.2, pad_token_id=0,
                         eos_token_id=1, bos_token_id=2, architectures=["GemmaForCausalLM"])
    return _save(path, tokenizer, config, GemmaForCausalLM, seed)


def build_tiny_mxbai_reranker(path: str | Path, *, max_positions: int = 1024, seed: int = 0) -> Path:
    """A random Qwen2ForCausalLM (mxbai-rerank-base-v2's architecture) with Qwen's chat special tokens."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    specials = {"<|endoftext|>": 2000, "<|im_start|>": 2001, "<|im_end|>": 2002}
    tokenizer = byte_level_tokenizer(specials, VOCAB_SIZE, max_positions, eos_token="<|im_end|>",
                                     pad_token="<|endoftext|>")
    config = Qwen2Config(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=max_positions,
                         initializer_range=0.2, tie_word_embeddings=True, bos_token_id=2000, eos_token_id=2002,
                         architectures=["Qwen2ForCausalLM"])
    return _save(path, tokenizer, config, Qwen2ForCausalLM, seed)


def build_tiny_qwen3_seq_cls(path: str | Path, *, max_positions: int = 1024, seed: int = 0) -> Path:
    """A random Qwen3ForSequenceClassification with one label: the format of Qwen3-Reranker's sequence-classification
    conversions (tomaarsen/Qwen3-Reranker-0.6B-seq-cls: the yes/no rows of the LM head folded into `score`)."""
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    specials = {"<|endoftext|>": 2000, "<|im_start|>": 2001, "<|im_end|>": 2002}
    tokenizer = byte_level_tokenizer(specials, VOCAB_SIZE, max_positions, eos_token="<|im_end|>",
                                     pad_token="<|endoftext|>")
    config = Qwen3Config(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=1, num_key_value_heads=1, head_dim=64,
                         max_position_embeddings=max_positions, initializer_range=0.2, num_labels=1,
                         pad_token_id=2000, eos_token_id=2002, architectures=["Qwen3ForSequenceClassification"])
    return _save(path, tokenizer, config, Qwen3ForSequenceClassification, seed)
