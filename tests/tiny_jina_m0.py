"""A tiny jina-reranker-m0 checkpoint built on the spot (no weights can be downloaded here), for tests.

jina-reranker-m0 is a Qwen2-VL (vision tower, merger, language model) whose `lm_head` is replaced by a score head:
`score.0` (Linear hidden→hidden), ReLU, `score.2` (Linear hidden→1) on the last token's hidden state. It is written
here in the published checkpoint's on-disk format: `architectures: ["JinaVLForRanking"]`, a `qwen2_vl` config.json,
weights named as the hub's `model.safetensors` names them (`model.layers.*`, `model.embed_tokens`, `visual.*`,
`score.0.*`, `score.2.*`, no `lm_head`), a byte-level BPE tokenizer (the Qwen2 format) trained here with Qwen2-VL's
special tokens (`<|vision_start|>`, `<|image_pad|>`, ...) at the ids the config names, and a Qwen2-VL processor
(`preprocessor_config.json`: 14-pixel patches merged 2x2, so one image token per 28x28 pixels).

`transformers_model(path)` loads the same weights into transformers' `Qwen2VLModel` + a torch score head, for the
tests' reference.
"""

from __future__ import annotations

import json
from pathlib import Path

from scoring.config.schema import EMBEDDED_MODEL, resolve_model_path

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
CARD_PIXELS = {"min_pixels": 3136, "max_pixels": 602112}
# The service's cap on an image's size in the tests, for a small max_model_len: 64 image tokens. Every test image is
# smaller, so its resize is the card's.
SERVICE_PIXELS = {"min_pixels": 3136, "max_pixels": 28 * 28 * 64}
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip


def qwen2_tokenizer(vocab_size: int = 1000):
    """A byte-level BPE tokenizer in Qwen2's format, trained on the MiniLM vocabulary's words, with Qwen2-VL's
    special tokens after the learned vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    words = (Path(resolve_model_path(EMBEDDED_MODEL)) / "vocab.txt").read_text(encoding="utf-8").split()
    words = [w for w in words if not w.startswith(("[", "##"))]
    corpus = [" ".join(words[i : i + 64]) for i in range(0, len(words), 64)]
    corpus += [line.title() for line in corpus]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    return Qwen2TokenizerFast(
        tokenizer_object=tok,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )


def build_tiny_jina_m0(
    path: str | Path, *, hidden_size: int = 128, layers: int = 2, vision_layers: int = 1, seed: int = 0
) -> Path:
    """Save a random jina-reranker-m0 (heads of 64, vLLM's CPU minimum; a one-block vision tower of width 128) with
    its tokenizer and processor to `path`; returns `path`."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2VLConfig, Qwen2VLImageProcessor

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = qwen2_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=layers,
            num_attention_heads=hidden_size // 64,
            num_key_value_heads=1,
            max_position_embeddings=4096,
            rms_norm_eps=1e-6,
            # Qwen2-VL's multimodal rotary sections (temporal, height, width) over head_dim / 2 = 32 frequencies
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            tie_word_embeddings=True,
            initializer_range=0.2,  # wide enough weights that scores differ clearly from pair to pair
        ),
        vision_config=dict(
            depth=vision_layers,
            embed_dim=128,
            hidden_size=hidden_size,  # the merger's output: the language model's width
            num_heads=2,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            initializer_range=0.2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    config.architectures = ["JinaVLForRanking"]
    torch.manual_seed(seed)
    model = _model(config)
    weights = {_published_name(name): tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    config.save_pretrained(path)
    raw = json.loads((path / "config.json").read_text())
    raw["auto_map"] = {"AutoModel": "modeling.JinaVLForRanking"}  # as published (its remote code is not shipped)
    (path / "config.json").write_text(json.dumps(raw, indent=2))
    tokenizer.save_pretrained(path)
    # Qwen2VLProcessor itself cannot be built without torchvision (its video processor needs it): the image
    # processor's file is written on its own, in the published form (the class names the hub's file names)
    Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2,
                          temporal_patch_size=2).save_pretrained(path)
    preprocessor = json.loads((path / "preprocessor_config.json").read_text())
    preprocessor.update(image_processor_type="Qwen2VLImageProcessor", processor_class="Qwen2VLProcessor")
    (path / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return path


def write_flat_config(path: str | Path) -> Path:
    """Rewrite the checkpoint's config.json in the published jina-reranker-m0 form, as transformers 4 saved it: the
    language model's settings at the top level beside `vision_config` (no `text_config`), its rotary settings as
    `rope_theta` and `rope_scaling` (`type: mrope` with the sections), `torch_dtype`. Returns `path`."""
    path = Path(path)
    raw = json.loads((path / "config.json").read_text())
    text = raw.pop("text_config")
    rope = text.pop("rope_parameters")
    # transformers 5's additions (layer_types) were not in the published file
    flat = {key: value for key, value in text.items()
            if key not in ("model_type", "dtype", "architectures", "layer_types")}
    flat.update(raw)  # the outer settings (architectures, model_type, token ids, vision_config) win
    flat["rope_theta"] = rope["rope_theta"]
    flat["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    flat["torch_dtype"] = flat.pop("dtype", None) or "float32"
    flat.pop("transformers_version", None)
    (path / "config.json").write_text(json.dumps(flat, indent=2))
    return path


def card_scorer(checkpoint):
    """The card's computation: the prompt `**Document**:\\n{doc}\\n**Query**:\\n{query}` with an image as
    `<|vision_start|><|image_pad|><|vision_end|>`, its pad expanded to one token per 28x28 pixels of the image as
    Qwen2-VL's processor resizes it (the card's min/max pixels), the score token 100 appended, the last hidden
    state through the score head, sigmoid(logit - 2.65). Returns (score, prompt tokens)."""
    import io

    import torch
    from PIL import Image
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    processor = Qwen2VLImageProcessorPil.from_pretrained(checkpoint, **CARD_PIXELS)
    model = transformers_model(checkpoint)
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")

    def score(query: str | bytes, document: str | bytes) -> tuple[float, int]:
        parts = [(document, "Document"), (query, "Query")]
        text = "\n".join(f"**{name}**:\n{IMAGE if isinstance(x, bytes) else x}" for x, name in parts)
        images = [Image.open(io.BytesIO(x)).convert("RGB") for x, _ in parts if isinstance(x, bytes)]
        inputs = {}
        if images:
            pixels = processor(images=images, return_tensors="pt")
            inputs = {"pixel_values": pixels["pixel_values"], "image_grid_thw": pixels["image_grid_thw"]}
            pieces = text.split("<|image_pad|>")
            text = pieces[0] + "".join("<|image_pad|>" * int(thw.prod() // 4) + rest
                                       for thw, rest in zip(pixels["image_grid_thw"], pieces[1:]))
        ids = tokenizer(text)["input_ids"] + [100]
        if images:
            inputs["mm_token_type_ids"] = torch.tensor([[int(t == image_id) for t in ids]])
        with torch.no_grad():
            hidden = model.body(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                **inputs).last_hidden_state
            logit = model.score(hidden[:, -1]).squeeze()
        return float(torch.sigmoid(logit - 2.65)), len(ids)

    return score


class _Ranker:
    """What `transformers_model` returns: transformers' Qwen2-VL body and the score head, in float32."""

    def __init__(self, body, score):
        self.body = body
        self.score = score


def _model(config):
    import torch
    from transformers import Qwen2VLModel

    body = Qwen2VLModel(config).to(torch.float32)
    hidden = config.text_config.hidden_size
    score = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    for layer in (score[0], score[2]):
        torch.nn.init.normal_(layer.weight, std=0.2)
        torch.nn.init.normal_(layer.bias, std=0.2)
    with torch.no_grad():
        score[2].bias.fill_(2.65)  # the card's bias: sigmoid(logit - 2.65) spreads over (0, 1) rather than near 0
    model = torch.nn.Module()
    model.model = body
    model.score = score
    return model.eval()


def _published_name(name: str) -> str:
    """transformers 5's name of a weight → the name in the published jina-reranker-m0 `model.safetensors` (saved
    with transformers before 4.52: the language model at `model.`, the vision tower at `visual.`)."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    if name.startswith("model.visual."):
        return name[len("model."):]
    return name


def transformers_model(path: str | Path) -> _Ranker:
    """The checkpoint at `path` in transformers' `Qwen2VLModel` and a torch `Sequential` score head (float32)."""
    from safetensors.torch import load_file
    from transformers import Qwen2VLConfig

    config = Qwen2VLConfig.from_pretrained(path)
    model = _model(config)
    published = load_file(Path(path) / "model.safetensors")
    by_published = {_published_name(name): name for name in model.state_dict()}
    missing = set(by_published) ^ set(published)
    if missing:
        raise ValueError(f"weights that do not match: {sorted(missing)[:5]}")
    model.load_state_dict({by_published[name]: tensor for name, tensor in published.items()})
    return _Ranker(model.model.eval(), model.score.eval())


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a tiny random jina-reranker-m0 (for trying image reranking).")
    parser.add_argument("path", help="directory to write (config.json, weights, tokenizer, processor)")
    args = parser.parse_args()
    print(build_tiny_jina_m0(args.path))
