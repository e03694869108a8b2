import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.contract.exceptions import FeatureSpecError
from pipeline.contract.features import (
    CategoricalFeature,
    FeatureSpec,
    NumericFeature,
    VectorFeature,
    category_key,
)
from tests.support.factories import mixed_spec


def test_layout_puts_continuous_block_first_then_one_hots():
    spec = mixed_spec()
    assert spec.n_continuous == 1 + 1 + 3
    assert spec.n_categorical == 1
    assert spec.cardinalities == [3]  # web, pos, unknown bucket
    assert spec.input_dim == 5 + 3
    assert spec.n_units == 6
    assert spec.unit_names == ["amount", "foreign", "emb[0]", "emb[1]", "emb[2]", "channel"]
    mean, std = spec.continuous_mean_std()
    np.testing.assert_allclose(mean, [10.0, 0.25, 0.0, 1.0, 2.0])
    np.testing.assert_allclose(std, [2.0, 0.433, 1.0, 1.0, 2.0], rtol=1e-6)


def test_encode_columns_maps_unknown_and_missing_categories_to_bucket_zero():
    spec = mixed_spec()
    cont, cat = spec.encode_columns(
        {
            "amount": [1.0, None, 3.0],
            "channel": ["pos", "atm", None],
            "foreign": [True, False, None],
            "emb": np.arange(9, dtype=np.float32).reshape(3, 3),
        }
    )
    assert cont.shape == (3, 5)
    assert cont.dtype == np.float32
    assert np.isnan(cont[1, 0]) and np.isnan(cont[2, 1])
    assert cat[:, 0].tolist() == [2, 0, 0]


def test_encode_columns_names_missing_and_bad_columns():
    spec = mixed_spec()
    with pytest.raises(FeatureSpecError, match="missing feature columns"):
        spec.encode_columns({"amount": [1.0]})
    cols = {"amount": ["a"], "channel": ["web"], "foreign": [True], "emb": np.zeros((1, 3))}
    with pytest.raises(FeatureSpecError, match="'amount'"):
        spec.encode_columns(cols)


def test_spec_rejects_duplicates_reserved_names_and_bad_vectors():
    with pytest.raises(ValidationError, match="duplicate"):
        FeatureSpec(features=[NumericFeature(name="a", mean=0, std=1)] * 2)
    with pytest.raises(ValidationError, match="reserved"):
        CategoricalFeature(name="c", categories=["<unknown>"])
    with pytest.raises(ValidationError, match="3 entries"):
        VectorFeature(name="v", length=3, mean=[0.0], std=[1.0])
    with pytest.raises(ValidationError, match="both a feature and id"):
        FeatureSpec(features=[NumericFeature(name="a", mean=0, std=1)], id_column="a")


def test_spec_round_trips_through_json():
    spec = mixed_spec()
    again = FeatureSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
    assert again.unit_names == spec.unit_names


@pytest.mark.parametrize(
    ("value", "key"), [(True, "true"), (3, "3"), (3.0, "3"), (2.5, "2.5"), ("web", "web")]
)
def test_category_key_is_canonical(value, key):
    assert category_key(value) == key
