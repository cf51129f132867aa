"""Cross-encoder checkpoints built on the spot (no cross-encoder weights can be downloaded here), for tests and
benchmarks: a BertForSequenceClassification with one label and the MiniLM WordPiece tokenizer, an
XLMRobertaForSequenceClassification (bge-reranker's architecture) with a Unigram tokenizer trained here, or a
ModernBertForSequenceClassification (gte-reranker-modernbert's), saved in the ordinary on-disk format, so vLLM and
sentence-transformers load them like any cross-encoder from the hub."""

from __future__ import annotations

from pathlib import Path

from scoring.config.schema import EMBEDDED_MODEL, resolve_model_path


def build_tiny_cross_encoder(
    path: str | Path, *, hidden_size: int = 128, layers: int = 2, max_positions: int = 128, seed: int = 0
) -> Path:
    """A random BERT cross-encoder (heads of 64, vLLM's CPU minimum; token types on), whose tokenizer and
    position table agree on `max_positions`."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL), model_max_length=max_positions)
    return _write(path, tokenizer, BertConfig, BertForSequenceClassification, hidden_size=hidden_size,
                  layers=layers, seed=seed, max_position_embeddings=max_positions, type_vocab_size=2,
                  architectures=["BertForSequenceClassification"], pad_token_id=tokenizer.pad_token_id)


def _write(path, tokenizer, config_class, model_class, *, hidden_size: int, layers: int, seed: int, **fields) -> Path:
    """A random one-label sequence classifier (heads of 64, vLLM's CPU minimum), saved beside its tokenizer."""
    import torch

    config = config_class(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
                          num_attention_heads=hidden_size // 64, intermediate_size=hidden_size * 2, num_labels=1,
                          initializer_range=0.2,  # wide enough weights that scores differ clearly from pair to pair
                          **fields)
    torch.manual_seed(seed)
    model_class(config).to(torch.float32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def xlmr_tokenizer(max_positions: int, vocab_size: int = 4000):
    """An XLM-RoBERTa tokenizer (a SentencePiece-style Unigram model, `<s> A </s></s> B </s>` pairs, no token types)
    trained here on the MiniLM WordPiece vocabulary's words: the format of bge-reranker-v2-m3's tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizerFast

    words = (Path(resolve_model_path(EMBEDDED_MODEL)) / "vocab.txt").read_text(encoding="utf-8").split()
    words = [w for w in words if not w.startswith(("[", "##"))]
    corpus = [" ".join(words[i:i + 64]) for i in range(0, len(words), 64)]
    corpus += [line.title() for line in corpus]  # capitals too: XLM-R's vocabulary is cased
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]  # XLM-R's ids 0-3
    tok.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                             unk_token="<unk>"))
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   model_max_length=max_positions)


def build_tiny_xlmr_cross_encoder(path: str | Path, *, hidden_size: int = 128, layers: int = 2,
                                  max_positions: int = 128, seed: int = 0) -> Path:
    """A random XLMRobertaForSequenceClassification with one label (bge-reranker-base / -v2-m3's architecture:
    positions offset past the padding id, no token types), with an XLM-R tokenizer (`xlmr_tokenizer`)."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    return _write(path, xlmr_tokenizer(max_positions), XLMRobertaConfig, XLMRobertaForSequenceClassification,
                  hidden_size=hidden_size, layers=layers, seed=seed,
                  max_position_embeddings=max_positions + 2,  # XLM-R's positions start after the padding id (1)
                  type_vocab_size=1, architectures=["XLMRobertaForSequenceClassification"], pad_token_id=1,
                  bos_token_id=0, eos_token_id=2)


def build_tiny_modernbert_cross_encoder(path: str | Path, *, hidden_size: int = 128, layers: int = 3,
                                        max_positions: int = 256, window: int = 64, seed: int = 0) -> Path:
    """A random ModernBertForSequenceClassification with one label (gte-reranker-modernbert's architecture: rotary
    positions, a global-attention layer then local ones of `window` tokens, no token types), its config.json in the
    hub's keys (`global_attn_every_n_layers`, `global_rope_theta`, ...) rather than transformers 5's, with the MiniLM
    WordPiece tokenizer as a `[CLS] A [SEP] B [SEP]` tokenizer without token types."""
    import json

    from transformers import AutoTokenizer, ModernBertConfig, ModernBertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL), model_max_length=max_positions,
                                              model_input_names=["input_ids", "attention_mask"])
    path = _write(path, tokenizer, ModernBertConfig, ModernBertForSequenceClassification, hidden_size=hidden_size,
                  layers=layers, seed=seed, max_position_embeddings=max_positions, local_attention=window,
                  architectures=["ModernBertForSequenceClassification"], pad_token_id=tokenizer.pad_token_id,
                  cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                  bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    config = json.loads((path / "config.json").read_text())
    for key in ("layer_types", "rope_parameters"):
        config.pop(key)
    config.update(global_attn_every_n_layers=3, global_rope_theta=160000.0, local_rope_theta=10000.0)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def build_minilm_cross_encoder(path: str | Path, seed: int = 0) -> Path:
    """The packaged MiniLM's BERT with a random one-label classification head: a real-sized cross-encoder."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    path = Path(path)
    source = resolve_model_path(EMBEDDED_MODEL)
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(source, num_labels=1)
    model.config.architectures = ["BertForSequenceClassification"]
    model.to(torch.float32).save_pretrained(path)
    AutoTokenizer.from_pretrained(source).save_pretrained(path)
    return path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a tiny random cross-encoder (for trying cross_encoder).")
    parser.add_argument("path", help="directory to write (config.json, weights, tokenizer)")
    parser.add_argument("--max-positions", type=int, default=512, help="the positions a pair may take")
    parser.add_argument("--family", choices=("bert", "xlm-roberta", "modernbert"), default="bert")
    args = parser.parse_args()
    build = {"bert": build_tiny_cross_encoder, "xlm-roberta": build_tiny_xlmr_cross_encoder,
             "modernbert": build_tiny_modernbert_cross_encoder}[args.family]
    print(build(args.path, max_positions=args.max_positions))
