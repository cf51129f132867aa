"""Tiny ColBERT checkpoints of the families vLLM 0.32 has a ColBERT class for, in the layouts users download.

No weights can be downloaded here, so each is written on the spot with random weights (heads of 64: vLLM's CPU
attention rejects smaller ones):
- a ModernBERT ColBERT as PyLate saves it (lightonai/GTE-ModernColBERT-v1, LateOn): `ModernBertModel` weights at
  the root, `[Q] ` / `[D] ` added to the tokenizer, the projection in `1_Dense`, `config_sentence_transformers.json`;
- an LFM2 ColBERT as PyLate saves it (LiquidAI/LFM2-ColBERT-350M): `Lfm2Model` weights at the root, a tokenizer
  with LFM2's special tokens (`<|pad|>` 0, `<|startoftext|>` 1 put before every text, `<|im_end|>` 7 its
  end-of-sequence token and no mask token, so PyLate pads queries with it), the rest as above;
- jina-colbert-v2 as the Stanford library saved it: `HF_ColBERT` in config.json, Jina's XLM-RoBERTa with rotary
  positions (its weight names under `roberta.`, the projection `linear.weight`), a config class of its own behind
  `auto_map` (so it loads only with remote code allowed; the module here is this project's minimal stand-in with the
  fields vLLM reads), `artifact.metadata`, and an XLM-R tokenizer with `[QueryMarker]` / `[DocumentMarker]` added
  right after `<mask>`, as in jina-colbert-v2's tokenizer (250002 and 250003 there).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from scoring.config.schema import EMBEDDED_MODEL, resolve_model_path

ST_VERSION = {"sentence_transformers": "3.4.1", "transformers": "4.48.2", "pytorch": "2.5.1"}


def _pylate_files(path: Path, hidden_size: int, dim: int, seed: int, **settings) -> None:
    """modules.json, the projection in `1_Dense`, and PyLate's settings, as `pylate.models.ColBERT.save` writes."""
    import torch
    from safetensors.torch import save_file

    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ], indent=2))
    (path / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": settings["document_length"] - 1, "do_lower_case": False}))
    (path / "config_sentence_transformers.json").write_text(json.dumps({
        "__version__": ST_VERSION, "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "MaxSim",
        "skiplist_words": list(string.punctuation), **settings}, indent=2))
    dense = path / "1_Dense"
    dense.mkdir()
    (dense / "config.json").write_text(json.dumps({"in_features": hidden_size, "out_features": dim, "bias": False,
                                                   "activation_function": "torch.nn.modules.linear.Identity"}))
    generator = torch.Generator().manual_seed(seed + 1)
    weight = torch.randn(dim, hidden_size, generator=generator) / hidden_size**0.5
    save_file({"linear.weight": weight}, str(dense / "model.safetensors"))


def build_modernbert_colbert(path: str | Path, *, query_length: int = 12, document_length: int = 24,
                             attend_to_expansion_tokens: bool = False, dim: int = 48, hidden_size: int = 128,
                             layers: int = 3, seed: int = 0) -> Path:
    """A PyLate ModernBERT ColBERT (GTE-ModernColBERT-v1's layout and settings, smaller); returns its folder."""
    import torch
    from transformers import AutoTokenizer, ModernBertConfig, ModernBertModel

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL), model_max_length=512,
                                              model_input_names=["input_ids", "attention_mask"])
    tokenizer.add_tokens(["[Q] ", "[D] "])  # what PyLate does with markers outside the vocabulary
    config = ModernBertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=hidden_size // 64, max_position_embeddings=512,
        local_attention=64, initializer_range=0.2, pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    torch.manual_seed(seed)
    model = ModernBertModel(config).to(torch.float32).eval()
    model.config.architectures = ["ModernBertModel"]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    _pylate_files(path, hidden_size, dim, seed, query_prefix="[Q] ", document_prefix="[D] ",
                  query_length=query_length, document_length=document_length,
                  attend_to_expansion_tokens=attend_to_expansion_tokens, do_query_expansion=True)
    return path


LFM2_SPECIALS = ["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|fim_pre|>", "<|fim_mid|>", "<|fim_suf|>",
                 "<|im_start|>", "<|im_end|>"]  # LFM2's ids 0-7


def lfm2_tokenizer():
    """LFM2's special tokens at LFM2's ids, `<|startoftext|>` before every text, no mask token, over the MiniLM
    WordPiece vocabulary's words (LFM2's own is a 65,536-token byte-level BPE: its ids need not be these)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = (Path(resolve_model_path(EMBEDDED_MODEL)) / "vocab.txt").read_text(encoding="utf-8").split()
    vocab = {token: i for i, token in enumerate(LFM2_SPECIALS + ["<|unk|>"])}
    for word in words:
        if not word.startswith("[") and word not in vocab:
            vocab[word] = len(vocab)
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="<|startoftext|> $A",
                                                       special_tokens=[("<|startoftext|>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|im_end|>",
                                        pad_token="<|pad|>", unk_token="<|unk|>", model_max_length=512)
    tokenizer.add_special_tokens({"additional_special_tokens": LFM2_SPECIALS})
    tokenizer.add_tokens(["[Q] ", "[D] "])
    return tokenizer


def build_lfm2_colbert(path: str | Path, *, query_length: int = 12, document_length: int = 24,
                       attend_to_expansion_tokens: bool = True, dim: int = 48, hidden_size: int = 128,
                       layer_types: tuple[str, ...] = ("conv", "full_attention", "conv"), seed: int = 0) -> Path:
    """A PyLate LFM2 ColBERT (LFM2-ColBERT-350M's layout: convolution blocks and attention blocks); returns it."""
    import torch
    from transformers import Lfm2Config, Lfm2Model

    path = Path(path)
    tokenizer = lfm2_tokenizer()
    config = Lfm2Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=len(layer_types), num_attention_heads=hidden_size // 64, num_key_value_heads=1,
        max_position_embeddings=512, block_multiple_of=64, block_auto_adjust_ff_dim=False,
        layer_types=list(layer_types),
        pad_token_id=0, bos_token_id=1, eos_token_id=7, initializer_range=0.2)
    torch.manual_seed(seed)
    model = Lfm2Model(config).to(torch.float32).eval()
    model.config.architectures = ["Lfm2Model"]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    # the hub's LFM2 config.json also names its block and convolution widths, which vLLM reads
    saved = json.loads((path / "config.json").read_text())
    saved.update(conv_dim=hidden_size, conv_dim_out=hidden_size, block_dim=hidden_size,
                 block_ff_dim=2 * hidden_size, block_norm_eps=1e-5)
    (path / "config.json").write_text(json.dumps(saved, indent=2))
    _pylate_files(path, hidden_size, dim, seed, query_prefix="[Q] ", document_prefix="[D] ",
                  query_length=query_length, document_length=document_length,
                  attend_to_expansion_tokens=attend_to_expansion_tokens, do_query_expansion=True)
    return path


JINA_CONFIG_MODULE = '''"""A rotary XLM-RoBERTa config: what vLLM's ColBERTJinaRobertaModel reads (a test stand-in)."""
from transformers import PretrainedConfig


class XLMRobertaFlashConfig(PretrainedConfig):
    model_type = "xlm-roberta"

    def __init__(self, vocab_size=250004, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                 intermediate_size=4096, hidden_act="gelu", max_position_embeddings=8194, type_vocab_size=1,
                 layer_norm_eps=1e-5, position_embedding_type="rotary", rotary_emb_base=20000.0,
                 lora_rank=4, lora_alpha=1, pad_token_id=1, bos_token_id=0, eos_token_id=2, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.layer_norm_eps = layer_norm_eps
        self.position_embedding_type = position_embedding_type
        self.rotary_emb_base = rotary_emb_base
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
'''


def xlmr_marker_tokenizer(max_positions: int):
    """An XLM-RoBERTa tokenizer (SentencePiece-style Unigram over `▁`-prefixed pieces, `<s>` 0, `<pad>` 1, `</s>` 2,
    `<unk>` 3, `<mask>` after the pieces) whose pieces are the MiniLM vocabulary's words and characters, scored by
    length (no training: instant), then `[QueryMarker]` and `[DocumentMarker]` right after `<mask>`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizerFast

    words = (Path(resolve_model_path(EMBEDDED_MODEL)) / "vocab.txt").read_text(encoding="utf-8").split()
    pieces = {}
    for word in words:
        word = word.removeprefix("##")
        if word.startswith("[") or not word:
            continue
        for piece in (word, "\u2581" + word, *word, *("\u2581" + c for c in word)):
            pieces.setdefault(piece, -1.0 - 10.0 / len(piece))  # longer pieces score higher
    for capital in string.ascii_uppercase:  # the vocabulary is uncased; XLM-R's is not
        pieces.update({capital: -11.0, "\u2581" + capital: -6.0})
    specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]  # XLM-R's ids 0-3
    tok = Tokenizer(models.Unigram(specials + sorted(pieces.items()), unk_id=3))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                        cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                        model_max_length=max_positions)
    tokenizer.add_tokens(["[QueryMarker]", "[DocumentMarker]"], special_tokens=True)
    return tokenizer


def build_jina_colbert(path: str | Path, *, query_maxlen: int = 12, doc_maxlen: int = 24, dim: int = 32,
                       hidden_size: int = 128, layers: int = 2, max_positions: int = 514, seed: int = 0) -> Path:
    """jina-colbert-v2's layout (smaller): `HF_ColBERT` over a rotary XLM-R behind `auto_map`; returns it."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = xlmr_marker_tokenizer(max_positions - 2)
    tokenizer.save_pretrained(path)
    (path / "configuration_xlm_roberta.py").write_text(JINA_CONFIG_MODULE)
    config = {
        "architectures": ["HF_ColBERT"],
        "auto_map": {"AutoConfig": "configuration_xlm_roberta.XLMRobertaFlashConfig"},
        "model_type": "xlm-roberta", "vocab_size": len(tokenizer), "hidden_size": hidden_size,
        "num_hidden_layers": layers, "num_attention_heads": hidden_size // 64, "intermediate_size": 2 * hidden_size,
        "hidden_act": "gelu", "max_position_embeddings": max_positions, "type_vocab_size": 1,
        "layer_norm_eps": 1e-5, "position_embedding_type": "rotary", "rotary_emb_base": 20000.0,
        "lora_rank": 4, "lora_alpha": 1, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=generator) * scale

    h, f = hidden_size, 2 * hidden_size
    weights = {
        "roberta.embeddings.word_embeddings.weight": rand(len(tokenizer), h),
        "roberta.embeddings.token_type_embeddings.weight": rand(1, h),
        "roberta.emb_ln.weight": 1 + rand(h, scale=0.05), "roberta.emb_ln.bias": rand(h, scale=0.05),
        "linear.weight": rand(dim, h, scale=h**-0.5),
    }
    for i in range(layers):
        layer = f"roberta.encoder.layers.{i}"
        weights |= {
            f"{layer}.mixer.Wqkv.weight": rand(3 * h, h, scale=h**-0.5), f"{layer}.mixer.Wqkv.bias": rand(3 * h),
            f"{layer}.mixer.out_proj.weight": rand(h, h, scale=h**-0.5), f"{layer}.mixer.out_proj.bias": rand(h),
            f"{layer}.norm1.weight": 1 + rand(h, scale=0.05), f"{layer}.norm1.bias": rand(h, scale=0.05),
            f"{layer}.mlp.fc1.weight": rand(f, h, scale=h**-0.5), f"{layer}.mlp.fc1.bias": rand(f),
            f"{layer}.mlp.fc2.weight": rand(h, f, scale=f**-0.5), f"{layer}.mlp.fc2.bias": rand(h),
            f"{layer}.norm2.weight": 1 + rand(h, scale=0.05), f"{layer}.norm2.bias": rand(h, scale=0.05),
        }
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})
    (path / "artifact.metadata").write_text(json.dumps({
        "query_token_id": "[unused0]", "doc_token_id": "[unused1]", "query_maxlen": query_maxlen,
        "doc_maxlen": doc_maxlen, "attend_to_mask_tokens": False, "mask_punctuation": True, "dim": 128,
        "similarity": "cosine", "interaction": "colbert", "checkpoint": "jinaai/xlm-roberta-flash-implementation",
    }, indent=4))
    return path
