import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scoring.config.check import check_serve_config, main
from scoring.config.schema import ConfigError
from tests.conftest import ROOT


def serve_config(tmp_path: Path, edit) -> Path:
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    edit(config["applications"][0]["args"]["models"][0])
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_shipped_config_is_valid():
    (line,) = check_serve_config(ROOT / "serve_config.yaml")
    assert "'reranker' is valid: minilm-colbert (late_interaction)" in line


@pytest.mark.parametrize(
    "edit,named",
    [
        (lambda m: m.update(kidn=m.pop("kind")), "models.0.late_interaction.kidn: unknown key (did you mean 'kind'?)"),
        (lambda m: m.update(kind="late_interation"),
         "kind 'late_interation' does not exist; the kinds are late_interaction, "),
        (lambda m: m.update(max_tokens_per_dok=128), "unknown key (did you mean 'max_tokens_per_doc'?)"),
    ],
)
def test_a_typo_names_the_application_and_the_key(tmp_path, edit, named):
    path = serve_config(tmp_path, edit)
    with pytest.raises(ConfigError) as err:
        check_serve_config(path)
    assert f"{path}: application 'reranker': invalid application config: " in str(err.value)
    assert named in str(err.value)
    if "kind 'late_interation'" in named:
        assert str(err.value).endswith("did you mean 'late_interaction'?")


def test_unreadable_yaml_and_a_config_without_applications(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("applications: [\n")
    with pytest.raises(ConfigError, match="cannot read it as YAML"):
        check_serve_config(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("proxy_location: EveryNode\n")
    with pytest.raises(ConfigError, match="no `applications:` list"):
        check_serve_config(empty)


def test_main_exits_non_zero_printing_the_error_once(tmp_path, capsys):
    path = serve_config(tmp_path, lambda m: m.update(kidn=m.pop("kind")))
    assert main([str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("unknown key") == 1
    assert main([str(ROOT / "serve_config.yaml")]) == 0


def test_make_serve_stops_on_a_typo_before_starting_anything(tmp_path):
    """`make serve CONFIG=...` checks the config first: the error once and a non-zero exit, no cluster started
    (`-o install`: the venv this test runs in is the installed one)."""
    path = serve_config(tmp_path, lambda m: m.update(kidn=m.pop("kind")))
    venv = Path(sys.executable).parents[1]
    run = subprocess.run(
        ["make", "-s", "-o", "install", "serve", f"CONFIG={path}", f"VENV={venv}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode != 0
    assert run.stderr.count("models.0.late_interaction.kidn: unknown key (did you mean 'kind'?)") == 1, run.stderr
    assert "Running config file" not in run.stdout + run.stderr  # serve run never started
