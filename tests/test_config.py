import tomllib

import pytest

from comp.config.schema import Recipe, from_dict, parse_override, set_key
from comp.core.utils import CompError
from comp.data.recipes import load_recipe


def test_overrides_parse_toml_values_and_bare_strings():
    r = load_recipe(None, ["train.lr_head=1e-3", "data.dir=data/x", "model.vectors=['char']",
                           "model.backbones=[{kind='bert', path='m'}]"])
    assert r.train.lr_head == 1e-3
    assert r.data.dir == "data/x"
    assert r.model.vectors == ("char",)
    assert r.model.backbones[0].path == "m"


def test_resolved_recipe_round_trips_through_toml():
    r = load_recipe(None, ["model.backbones=[{kind='xlnet', path='p', max_len=64}]",
                           "tune={'train.lr_head'={type='float', low=1e-4, high=1e-2}}"])
    again = from_dict(Recipe, tomllib.loads(r.to_toml()))
    assert again == r


@pytest.mark.parametrize("override, key", [
    ("train.lrr=1", "train.lrr"),
    ("train.batch_size='a'", "train.batch_size"),
    ("train.batch_size=0", "train.batch_size"),
    ("model.dropout=1.5", "model.dropout"),
    ("linear.model='xgb'", "linear.model"),
    ("kind='nope'", "kind"),
    ("train.cache_frozen=1", "train.cache_frozen"),
])
def test_recipe_errors_name_the_key(override, key):
    with pytest.raises(CompError) as e:
        load_recipe(None, [override])
    assert f"'{key}'" in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_key_in_file_is_an_error(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text("[train]\nepochs = 3\n")
    with pytest.raises(CompError, match="train.epochs"):
        load_recipe(p)


def test_set_key_returns_validated_copy():
    r = load_recipe(None)
    r2 = set_key(r, "train.lr_head", 0.5)
    assert r2.train.lr_head == 0.5 and r.train.lr_head != 0.5
    with pytest.raises(CompError):
        set_key(r, "train.warmup", 2.0)


def test_parse_override_needs_equals():
    with pytest.raises(CompError):
        parse_override("train.lr_head")
