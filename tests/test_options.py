"""Overrides checked by name, type and range before anything is built: one shared rule
(custom/utils/options.py) for training and ``prepare``; a bad value is one line naming the option."""

from __future__ import annotations

import pytest
from conftest import tiny_overrides, train_config_files

from custom.utils.cli import OptionError
from custom.utils.options import check_option, check_training_options
from custom.utils.runtime import input_error_of

BAD = [
    ("num_classes", "abc"),
    ("num_classes", 1),
    ("image_size", 0),
    ("image_size", [64]),
    ("image_size", "[64]"),
    ("image_size", [64, 50]),
    ("max_iterations", "abc"),
    ("max_iterations", -1),
    ("max_iterations", 0),
    ("batch_size", 0),
    ("learning_rate", "nan"),
    ("learning_rate", float("nan")),
    ("learning_rate", -1),
    ("learning_rate", "inf"),
    ("seed", -1),
    ("seed", "abc"),
    ("seed", 2**32),
    ("seed", True),
    ("review_rate", 0),
    ("review_rate", 1.5),
    ("review_rate", "nan"),
    ("review_rate", "abc"),
]
GOOD = [
    ("num_classes", 3, 3),
    ("image_size", [64, 64], [64, 64]),
    ("image_size", "[128, 96]", [128, 96]),
    ("max_iterations", "12", 12),
    ("batch_size", 4, 4),
    ("learning_rate", "1e-3", 1e-3),
    ("seed", 0, 0),
    ("review_rate", "0.05", 0.05),
]


@pytest.mark.parametrize("name,value", BAD)
def test_bad_values_are_refused_naming_the_option(name, value):
    with pytest.raises(OptionError) as err:
        check_option(name, value)
    text = str(err.value)
    assert text.startswith(f"--{name}: expected ") and repr(value) in text and "\n" not in text, text
    with pytest.raises(OptionError, match=f"^--{name.replace('_', '-')}: "):
        check_option(name, value, dashes=True)  # prepare's spelling


@pytest.mark.parametrize("name,value,expected", GOOD)
def test_good_values_pass_normalised(name, value, expected):
    assert check_option(name, value) == expected
    assert check_training_options(**{name: value}) == {name: expected}


@pytest.mark.parametrize(
    "override",
    [
        {"num_classes": "abc"},
        {"image_size": [64]},
        {"max_iterations": -1},
        {"batch_size": 0},
        {"learning_rate": "nan"},
        {"seed": -1},
        {"seed": "abc"},
        {"review_rate": 2},
    ],
    ids=lambda o: f"{next(iter(o))}={next(iter(o.values()))}",
)
def test_training_refuses_a_bad_override_before_anything_is_built(override, tmp_path, demo_dataset):
    from monai.bundle import run

    name = next(iter(override))
    with pytest.raises(Exception) as err:
        run(run_id="training", config_file=train_config_files(), **tiny_overrides(tmp_path, demo_dataset, **override))
    found = input_error_of(err.value)
    assert isinstance(found, OptionError) and str(found).startswith(f"--{name}: expected"), str(err.value)[-2000:]
    models = tmp_path / "models"
    assert not models.exists() or not [p.name for p in models.iterdir() if p.name != "train_state"], list(
        models.iterdir()
    )
