"""`python -m scoring.config.check serve_config.yaml`: check a Serve config's application args before starting anything.

`serve run` does not stop on a bad config: the application's build fails inside the cluster, Ray prints the error
in a traceback once per build attempt and the command keeps running with no application. `make serve` runs this
first, so a typo prints once, naming the key, and the command ends non-zero.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from scoring.config.schema import ConfigError, parse_app_config

BUILDER = "deployments.app:build_app"


def check_serve_config(path: str | Path) -> list[str]:
    """One line per application of ours in the config: what it serves, or what is wrong with it. Raises
    ConfigError naming the application and the key when any is invalid."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read it as YAML: {exc}") from None
    applications = config.get("applications") if isinstance(config, dict) else None
    if not isinstance(applications, list) or not applications:
        raise ConfigError(f"{path}: no `applications:` list")
    lines = []
    for i, app in enumerate(applications):
        name = app.get("name", f"applications.{i}") if isinstance(app, dict) else f"applications.{i}"
        if not isinstance(app, dict) or app.get("import_path") != BUILDER:
            continue
        try:
            parsed = parse_app_config(app.get("args"))
        except ConfigError as exc:
            raise ConfigError(f"{path}: application {name!r}: {exc}") from None
        models = ", ".join(f"{m.name} ({m.kind})" for m in parsed.models)
        lines.append(f"{path}: application {name!r} is valid: {models}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m scoring.config.check SERVE_CONFIG.yaml", file=sys.stderr)
        return 2
    try:
        print("\n".join(check_serve_config(argv[0])))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
