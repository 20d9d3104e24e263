"""Run configuration: defaults, TOML files, ``--set`` overrides and one-line validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedrec.config import RunConfig, config_to_json, load_config, parse_override
from fedrec.errors import FedrecError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOML = ROOT / "configs" / "default.toml"


def fails(call, *fragments: str) -> str:
    """Run ``call``, expect a one-line FedrecError containing every fragment; return the message."""
    with pytest.raises(FedrecError) as info:
        call()
    message = str(info.value)
    assert message, "empty error message"
    assert "\n" not in message and "\r" not in message, f"multi-line message: {message!r}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- defaults and files ---------------------------------------------------------------------------


def test_defaults_validate_and_match_documented_values():
    config = load_config(None, [])
    assert isinstance(config, RunConfig)
    assert config.data.name == "synthetic"
    assert config.model.name == "mf"
    assert config.train.mode == "federated"
    assert config.train.rounds == 30
    assert config.data.fold == 1
    assert config.train.client_fraction == 1.0
    # defaults are a fixed point: dumping and re-validating changes nothing
    assert RunConfig.model_validate(config.model_dump()) == config
    assert load_config(None) == config  # overrides are optional


def test_default_toml_file_loads():
    config = load_config(DEFAULT_TOML, [])
    assert config.data.name == "synthetic"
    assert config.data.validation_ratio == pytest.approx(0.1)
    assert config.model.dim == 32
    assert config.train.rounds == 20
    assert config.train.batch_size == 8
    assert config.train.server_optimizer == "adam"
    assert config.train.server_lr == pytest.approx(0.03)
    # keys the file leaves out keep their defaults
    assert config.train.client_fraction == 1.0
    assert config.model.init_std is None and "init_std" not in config.model.options()  # the model default applies


def test_toml_file_values_override_defaults(tmp_path):
    path = write(tmp_path, '[model]\ndim = 12\nl2 = 0.5\n[train]\nmode = "centralized"\nrounds = 7\n')
    config = load_config(path, [])
    assert (config.model.dim, config.model.l2) == (12, 0.5)
    assert (config.train.mode, config.train.rounds) == ("centralized", 7)
    assert config.data.name == "synthetic"


def test_set_overrides_win_over_file_and_parse_toml_literals(tmp_path):
    path = write(tmp_path, "[train]\nrounds = 7\nlocal_lr = 0.5\n")
    config = load_config(path, [
        "train.rounds=3",               # int
        "train.local_lr=0.25",          # float
        "data.download=true",           # bool
        "data.name=synthetic",          # unquoted string
        "data.silo_feature=\"region\"",  # quoted string
        "model.l2 = 1e-3",              # spaces around '=' and exponent float
        "data.data_dir=/tmp/some dir",  # unquoted string with a slash and a space
    ])
    assert config.train.rounds == 3 and isinstance(config.train.rounds, int)
    assert config.train.local_lr == 0.25
    assert config.data.download is True
    assert config.data.name == "synthetic"
    assert config.data.silo_feature == "region"
    assert config.model.l2 == pytest.approx(1e-3)
    assert config.data.data_dir == "/tmp/some dir"


def test_later_override_wins():
    assert load_config(None, ["train.rounds=3", "train.rounds=5"]).train.rounds == 5


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("train.rounds=10", (["train", "rounds"], 10)),
        ("train.local_lr=0.5", (["train", "local_lr"], 0.5)),
        ("data.download=false", (["data", "download"], False)),
        ("data.name=ml-100k", (["data", "name"], "ml-100k")),
        ('data.name="ml-100k"', (["data", "name"], "ml-100k")),
        ("data.path=a=b.csv", (["data", "path"], "a=b.csv")),  # only the first '=' splits
        (" train.rounds = 4 ", (["train", "rounds"], 4)),
    ],
)
def test_parse_override(assignment, expected):
    path, value = parse_override(assignment)
    assert (path, value) == expected
    assert type(value) is type(expected[1])


def test_config_to_json_round_trips():
    config = load_config(None, ["train.rounds=3", "model.dim=8"])
    data = json.loads(config_to_json(config))
    assert data["train"]["rounds"] == 3 and data["model"]["dim"] == 8
    assert RunConfig.model_validate(data) == config


# -- unknown keys ---------------------------------------------------------------------------------


def test_unknown_key_via_set_names_it_and_suggests_the_close_match():
    message = fails(lambda: load_config(None, ["train.round=3"]), "train.round", "did you mean train.rounds")
    assert message.startswith("unknown config key")


def test_unknown_key_in_file_names_it_and_suggests_the_close_match(tmp_path):
    path = write(tmp_path, "[model]\ndimm = 8\n")
    fails(lambda: load_config(path, []), "model.dimm", "did you mean model.dim")


def test_unknown_key_without_close_match_lists_valid_keys():
    fails(lambda: load_config(None, ["model.zzzzzz=1"]), "model.zzzzzz", "dim", "l2", "init_std")


def test_unknown_section_names_it_and_suggests_the_close_match(tmp_path):
    fails(lambda: load_config(None, ["trian.rounds=3"]), "[trian]", "did you mean [train]")
    path = write(tmp_path, "[modle]\ndim = 8\n")
    fails(lambda: load_config(path, []), "[modle]", "did you mean [model]")


def test_unknown_section_without_close_match_lists_sections(tmp_path):
    path = write(tmp_path, "rounds = 5\n")  # a top-level key, not in a section
    fails(lambda: load_config(path, []), "[rounds]", "data", "model", "train")


def test_section_that_is_not_a_table(tmp_path):
    path = write(tmp_path, "train = 5\n")
    fails(lambda: load_config(path, []), "[train]")
    fails(lambda: load_config(path, ["train.rounds=3"]), "[train]")


# -- values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assignment", "key"),
    [
        ("train.rounds=0", "train.rounds"),
        ("train.rounds=-3", "train.rounds"),
        ("data.fold=6", "data.fold"),
        ("data.fold=0", "data.fold"),
        ("train.client_fraction=1.5", "train.client_fraction"),
        ("train.client_fraction=0", "train.client_fraction"),
        ("model.l2=-0.1", "model.l2"),
        ("model.dim=0", "model.dim"),
        ("data.test_ratio=1.0", "data.test_ratio"),
        ("train.local_lr=0", "train.local_lr"),
        ("train.server_momentum=1.0", "train.server_momentum"),
    ],
)
def test_out_of_range_values_name_the_key(assignment, key):
    value = assignment.split("=", 1)[1]
    fails(lambda: load_config(None, [assignment]), key, value)


def test_out_of_range_value_in_file_names_the_key(tmp_path):
    path = write(tmp_path, "[data]\nfold = 6\n")
    fails(lambda: load_config(path, []), "data.fold", "6")


@pytest.mark.parametrize(
    ("assignment", "key"),
    [
        ("train.rounds=abc", "train.rounds"),
        ("train.rounds=2.5", "train.rounds"),
        ('train.rounds="ten"', "train.rounds"),
        ("model.dim=[8]", "model.dim"),
        ("train.local_lr=fast", "train.local_lr"),
        ("data.download=maybe", "data.download"),
        ("train.mode=federate", "train.mode"),
        ("train.server_optimizer=adamw", "train.server_optimizer"),
        ("data.split=random", "data.split"),
        ("data.fold=1.5", "data.fold"),
        ("train.rounds=", "train.rounds"),
    ],
)
def test_wrong_types_name_the_key(assignment, key):
    fails(lambda: load_config(None, [assignment]), key)


def test_wrong_type_in_file_names_the_key(tmp_path):
    path = write(tmp_path, '[train]\nrounds = "many"\n')
    fails(lambda: load_config(path, []), "train.rounds", "many")


def test_cross_field_rule_table_needs_path():
    fails(lambda: load_config(None, ["data.name=table"]), "data.path")
    assert load_config(None, ["data.name=table", "data.path=ratings.csv"]).data.path == "ratings.csv"


# -- malformed overrides and files ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("assignment", "fragment"),
    [
        ("train.rounds", "key=value"),       # no '='
        ("rounds=3", "section.key"),         # no section
        ("a.b.c=1", "section.key"),          # too deep
        (".rounds=3", "section.key"),        # empty section
        ("train.=3", "section.key"),         # empty key
        ("=3", "section.key"),
    ],
)
def test_malformed_set(assignment, fragment):
    fails(lambda: parse_override(assignment), fragment)
    fails(lambda: load_config(None, [assignment]), fragment)


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.toml"
    fails(lambda: load_config(missing, []), str(missing), "not found")


def test_config_path_that_is_a_directory(tmp_path):
    fails(lambda: load_config(tmp_path, []), str(tmp_path))


@pytest.mark.parametrize(
    "text",
    [
        "[train\nrounds = 3\n",          # unclosed table header
        "[train]\nrounds = \n",          # missing value
        "[train]\nrounds = 3\nrounds = 4\n",  # duplicate key
        "[train]\nmode = 'federated\n",  # unterminated string
    ],
)
def test_invalid_toml(tmp_path, text):
    path = write(tmp_path, text)
    fails(lambda: load_config(path, []), str(path), "TOML")


@pytest.mark.parametrize(
    ("assignment", "key"),
    [("train.rounds=true", "train.rounds"), ("data.fold=true", "data.fold"), ("data.download=1", "data.download")],
)
def test_bool_and_int_are_not_interchangeable(assignment, key):
    fails(lambda: load_config(None, [assignment]), key)


def test_number_like_text_stays_text_for_string_fields():
    config = load_config(None, ["data.user_col=0", "data.item_col=2024"])
    assert config.data.user_col == "0" and config.data.item_col == "2024"


def test_the_config_and_the_model_registry_agree_on_the_text_models():
    from fedrec.config import TEXT_MODELS
    from fedrec.models.registry import TEXT_MODELS as REGISTERED

    assert set(TEXT_MODELS) == set(REGISTERED)


def test_text_models_take_dp_but_refuse_item_hiding_in_one_line():
    config_file = Path(__file__).resolve().parents[1] / "configs" / "ml100k-text-coldstart.toml"
    assert load_config(config_file, ["privacy.epsilon=8", "privacy.delta=1e-4"]).privacy.enabled
    with pytest.raises(FedrecError, match="would still reveal them") as error:
        load_config(config_file, ["privacy.hiding='dense'"])
    assert "\n" not in str(error.value)


def test_time_ties_belong_to_leave_last_out():
    assert load_config(None, ["data.split=leave_last_out", "data.time_ties=random"]).data.time_ties == "random"
    with pytest.raises(FedrecError, match="data.time_ties") as info:
        load_config(None, ["data.split=ratio", "data.time_ties=random"])
    assert "\n" not in str(info.value)
    with pytest.raises(FedrecError, match="time_ties"):
        load_config(None, ["data.split=leave_last_out", "data.time_ties=newest"])


def test_server_lr_by_tensor_reaches_the_server_optimizer_and_refuses_unknown_tensors():
    from fedrec.models.registry import build_model
    from fedrec.runtime.experiment import check_server_tensors, prepare
    from fedrec.runtime.trainer import fedavg_settings

    config = load_config(None, ["model.name=text_bpr", "train.server_lr=0.05",
                                "train.server_lr_by_tensor={adapter_w = 0.01, adapter_b = 0.02}"])
    server = fedavg_settings(config).server
    assert server.lr_by_tensor == (("adapter_b", 0.02), ("adapter_w", 0.01))
    assert (server.lr_of("adapter_w"), server.lr_of("adapter_b"), server.lr_of("item_vec")) == (0.01, 0.02, 0.05)
    model = build_model("text_bpr", {"dim": 3}, 2, 4, item_text=torch.zeros(4, 5))
    check_server_tensors(config, model)
    private = load_config(None, ["model.name=text_bpr", "train.server_lr_by_tensor={user_vec = 0.01}"])
    with pytest.raises(FedrecError, match="names user_vec, which the server does not step"):
        check_server_tensors(private, model)  # user vectors stay on the clients: the server never steps them
    constant = load_config(None, ["model.name=text_bpr", "train.server_lr_by_tensor={item_text = 0.01}"])
    with pytest.raises(FedrecError, match="names item_text"):
        check_server_tensors(constant, model)  # the text embeddings are constant: nobody uploads or steps them
    with pytest.raises(FedrecError, match="greater than 0"):
        load_config(None, ["train.server_lr_by_tensor={adapter_w = 0}"])
    with pytest.raises(FedrecError, match="centralised training has none"):
        load_config(None, ["train.mode=centralized", "train.server_lr_by_tensor={item_vec = 0.01}"])
    typo = load_config(None, ["data.name=synthetic", "model.name=bpr", "train.server_lr_by_tensor={item_vecs = 0.01}"])
    with pytest.raises(FedrecError, match="names item_vecs"):
        prepare(typo)  # refused while preparing, before any round
