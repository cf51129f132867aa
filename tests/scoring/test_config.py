import pytest

from scoring.config import AppConfig, ConfigError, parse_app_config, resolve_model_path
from tests.conftest import default_app_args


def test_serve_config_args_are_valid():
    config = parse_app_config(default_app_args())
    assert config.models[0].name == "minilm-colbert"
    assert (resolve_model_path(config.models[0].model) + "/").endswith("/model/")


def test_defaults_give_the_embedded_model():
    config = parse_app_config(None)
    assert isinstance(config, AppConfig) and config.models[0].kind == "late_interaction"


@pytest.mark.parametrize(
    "args,named",
    [
        ({"models": [{"name": "m", "kind": "late_interaction", "modle": "x"}]}, "modle"),
        ({"limitz": {}}, "limitz"),
        ({"limits": {"max_documents": 0}}, "limits.max_documents"),
        ({"models": [{"name": "m", "kind": "teleport"}]}, "models.0"),
        ({"models": []}, "models"),
        ({"models": [{"name": "m"}, {"name": "m"}]}, "duplicate model names: m"),
        ({"models": [{"name": "m", "max_model_len": 64, "max_tokens_per_doc": 128}]}, "max_tokens_per_doc"),
        ({"models": [{"name": "bad name!"}]}, "models.0"),
    ],
)
def test_invalid_config_names_the_key(args, named):
    with pytest.raises(ConfigError, match="invalid application config") as err:
        parse_app_config(args)
    assert named in str(err.value)


def test_package_model_that_is_not_installed():
    with pytest.raises(ConfigError, match="not installed"):
        resolve_model_path("package:no_such_package_here")
    assert resolve_model_path("org/model") == "org/model"
