"""Real clients against the default app: the Cohere SDK, a Jina-shaped request, vLLM's benchmark client, and the
README's client examples run exactly as written."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys

import httpx
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e

QUERY = "what is the capital of France?"
DOCUMENTS = ["Berlin is in Germany.", "Paris is the capital of France.", "Bananas are yellow."]
PARIS = 1
README_URL = "http://localhost:8000"


def test_cohere_sdk_v2_rerank(default_app):
    import cohere

    url, _ = default_app
    co = cohere.ClientV2(api_key="unused", base_url=url, timeout=120)
    response = co.rerank(model="minilm-colbert", query=QUERY, documents=DOCUMENTS, top_n=2)
    assert [r.index for r in response.results][0] == PARIS
    assert len(response.results) == 2
    assert response.results[0].relevance_score >= response.results[1].relevance_score
    assert response.meta.tokens.input_tokens > 0
    assert response.id


def test_jina_shaped_request(default_app):
    url, _ = default_app
    body = {
        "model": "minilm-colbert",
        "query": QUERY,
        "documents": [{"text": d} for d in DOCUMENTS],
        "top_n": 2,
        "return_documents": True,
    }
    r = httpx.post(f"{url}/v1/rerank", json=body, timeout=120)
    assert r.status_code == 200, r.text
    payload = r.json()
    assert payload["results"][0] == {
        "index": PARIS,
        "document": {"text": DOCUMENTS[PARIS]},
        "relevance_score": payload["results"][0]["relevance_score"],
    }
    assert payload["usage"]["total_tokens"] > 0


def test_vllm_bench_client(default_app):
    """`vllm bench serve --backend vllm-rerank --dataset-name random-rerank` against our /v1/rerank: 12 random
    documents in requests of 4 (a random query each), every request answered."""
    url, _ = default_app
    args = ["--base-url", url, "--num-prompts", "12", "--random-batch-size", "4", "--random-input-len", "64",
            "--max-concurrency", "2", "--seed", "0", "--disable-tqdm"]  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.vllm_bench", *args], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert (summary["completed"], summary["documents"]) == (3, 12)  # every request answered


def readme_examples(heading: str = "### Client examples") -> list[str]:
    """The ```python blocks of one README section, as written."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading) + len(heading) :]
    section = re.split(r"\n#{1,3} ", section, maxsplit=1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_readme_client_examples_run_as_written(default_app):
    url, _ = default_app
    examples = readme_examples()
    assert len(examples) >= 3
    for code in examples:
        assert README_URL in code
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code.replace(README_URL, url), "README.md", "exec"), {"__name__": "readme_example"})
        printed = out.getvalue()
        assert printed.strip(), code
        first = printed.splitlines()[0]
        assert first.startswith(str(PARIS)) or "Paris is the capital of France." in first, printed
