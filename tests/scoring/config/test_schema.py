import pytest

from scoring.config.schema import AppConfig, ConfigError, handoff_dtypes, parse_app_config, resolve_model_path
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


CE = {"name": "ce", "kind": "cross_encoder", "model": "/ce"}
BI = {"name": "bi", "kind": "bi_encoder"}
GEN = {"name": "gen", "kind": "generative", "model": "/gen"}


def cascade(first: str, then: str) -> dict:
    return {"name": "c", "kind": "cascade", "first": first, "then": then}


@pytest.mark.parametrize(
    "first,then",
    [("minilm-colbert", "ce"), ("bi", "ce"), ("ce", "gen"), ("bi", "gen"), ("minilm-colbert", "gen"), ("ce2", "ce")],
)
def test_cascades_of_any_two(first, then):
    models = [{"name": "minilm-colbert"}, CE, {**CE, "name": "ce2"}, BI, GEN, cascade(first, then)]
    config = parse_app_config({"models": models})
    assert [m.kind for m in config.cross_encoder_models] == ["cross_encoder"] * 2
    assert [m.name for m in config.bi_encoder_models] == ["bi"]


@pytest.mark.parametrize(
    "stage,named",
    [
        (cascade("gen", "ce"), "models.4.first: 'gen' must name a late_interaction, bi_encoder or cross_encoder model; "
         "it is a generative model"),
        (cascade("bi", "minilm-colbert"), "models.4.then: 'minilm-colbert' must name a cross_encoder or generative "
         "model; it is a late_interaction model"),
        (cascade("bi", "bi"), "models.4.then: 'bi' must name a cross_encoder or generative model"),
        (cascade("ce", "ce"), "models.4.then: 'ce' is the first stage too"),
        (cascade("nope", "ce"), "models.4.first: 'nope' must name"),
    ],
)
def test_pairings_that_make_no_sense_name_the_key(stage, named):
    with pytest.raises(ConfigError) as err:
        parse_app_config({"models": [{"name": "minilm-colbert"}, CE, BI, GEN, stage]})
    assert named in str(err.value)


def test_a_cascade_inside_a_cascade_names_the_key():
    inner = {**cascade("minilm-colbert", "ce"), "name": "inner"}
    models = [{"name": "minilm-colbert"}, CE, inner, cascade("inner", "ce")]
    with pytest.raises(ConfigError, match="models.3.first: 'inner' .* it is a cascade model"):
        parse_app_config({"models": models})


@pytest.mark.parametrize(
    "model,named",
    [
        ({"name": "ce", "kind": "cross_encoder"}, "models.0.cross_encoder.model"),
        ({**CE, "activation_fn": "os.system"}, "models.0.cross_encoder.activation_fn"),
        ({**CE, "max_tokens_per_doc": 0}, "models.0.cross_encoder.max_tokens_per_doc"),
        ({**BI, "pooling": "mean"}, "pooling"),
    ],
)
def test_new_kinds_name_their_bad_keys(model, named):
    with pytest.raises(ConfigError) as err:
        parse_app_config({"models": [model]})
    assert named in str(err.value)


@pytest.mark.parametrize("embedding_dtype, document_dtype, want", [
    ("auto", "float16", ("float32", "float16")),
    ("auto", "int8", ("float32", "float16")),
    ("auto", "float8_e4m3", ("float32", "float16")),
    ("auto", "float32", ("float32", "float32")),  # float16 would round what the scorer keeps exactly
    ("float32", "float16", ("float32", "float32")),
    ("float16", "float32", ("float16", "float16")),
])
def test_handoff_dtypes_follow_the_scorers_storage(embedding_dtype, document_dtype, want):
    assert handoff_dtypes(embedding_dtype, document_dtype) == want
    model = AppConfig.model_validate({"cache": {"document_dtype": document_dtype}}).late_interaction_models[0]
    assert model.embedding_dtype == "auto"
