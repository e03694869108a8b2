"""Never silently normal: a score that is not finite is an anomaly wherever a score meets a
threshold (worker alerts, per-entity models, ``pipeline score``, ``trainer evaluate``).

Inputs are extreme but valid: any finite float32 is accepted by the codec, and near the
float32 limit every model kind overflows (to infinity, or to NaN with layer norm)."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from pipeline.contract.alerts import AlertEvent, alert_json_schema, build_event, encode_event
from pipeline.contract.artifact import load_artifact
from pipeline.contract.entity_scoring import RoutedScores, open_entity_scorer
from pipeline.contract.models import ModelConfig
from pipeline.contract.scoring import Scorer
from pipeline.contract.verdict import anomaly_reason, is_anomalous
from pipeline.offline.batch_scoring import output_table, score_parquet
from tests.support.entities import publish_entity_set
from tests.support.factories import numeric_spec, publish_model, tiny_model
from trainer import detection_metrics
from trainer.evaluate import EvaluationRequest, evaluate

SPEC = numeric_spec(4)
CPU = torch.device("cpu")
KINDS = [(k, n) for k in ("ae", "vae", "dae") for n in ("none", "batch", "layer")]
F32_MAX = float(np.finfo(np.float32).max)
EXTREME = st.floats(-F32_MAX, F32_MAX, width=32) | st.sampled_from(
    [F32_MAX, -F32_MAX, 1e38, -1e38, 1e19, 0.0]
)
ROWS = st.lists(st.lists(EXTREME, min_size=4, max_size=4), min_size=1, max_size=6)
OVERFLOW = [[F32_MAX, 0.0, 0.0, 0.0], [0.0, 1.0, 2.0, 3.0]]  # always one non-finite score
VALIDATOR = jsonschema.Draft202012Validator(alert_json_schema())
NO_CAT = np.zeros((0, 0), np.int64)


@pytest.fixture(scope="module")
def scorers():
    return {
        kn: Scorer(SPEC, tiny_model(SPEC, kind=kn[0], norm=kn[1]), CPU, top_k=2) for kn in KINDS
    }


@pytest.fixture(scope="module")
def entity_scorers(tmp_path_factory):
    out = {}
    for kind in ("ae", "dae"):
        store = tmp_path_factory.mktemp(f"entities-{kind}")
        config = ModelConfig(kind=kind, input_dim=4, output_dim=4, hidden_dims=[8], latent_dim=2)
        publish_entity_set(store, SPEC, ["a", "b"], config=config, thresholds=[0.5, 1.0, 2.0])
        loaded = load_artifact(str(store), "m")
        assert loaded.entities is not None
        out[kind] = open_entity_scorer(SPEC, loaded.entities, CPU, top_k=2)
    return out


def check_every_verdict(routed: RoutedScores) -> None:
    """Each row's event, as JSON a consumer reads, says what the one rule says; a row whose
    score is not finite is an anomaly with reason non_finite_score; batch scoring's column
    and evaluate's confusion counts flag the same rows."""
    scores = routed.scores
    flagged = routed.is_anomaly
    for i, score in enumerate(scores.scores.tolist()):
        event = build_event(
            source=("in", 0, i, 1),
            key=b"k",
            record_id=None,
            score=score,
            threshold=float(routed.thresholds[i]),
            model=("m", "v"),
            top_features=[
                (SPEC.unit_names[u], e)
                for u, e in zip(
                    scores.top_index[i].tolist(), scores.top_error[i].tolist(), strict=True
                )
            ],
            total_error=score * SPEC.n_units,
            detected_at="2026-01-01T00:00:00.000Z",
        )
        decoded = json.loads(encode_event(event))
        VALIDATOR.validate(decoded)
        AlertEvent.model_validate(decoded)
        assert decoded["is_anomaly"] == bool(flagged[i])
        if not np.isfinite(score):
            assert decoded["is_anomaly"] and decoded["reason"] == "non_finite_score"
            assert decoded["score"] is None
        assert decoded["reason"] == anomaly_reason(score, float(routed.thresholds[i]))
    table = output_table(pa.array(np.arange(len(scores))), "row", scores, routed.thresholds, SPEC)
    assert table.column("is_anomaly").to_pylist() == flagged.tolist()
    at = detection_metrics.at_threshold(
        scores.scores / routed.thresholds, np.ones(len(scores), bool), 1.0
    )
    assert at.tp == int(flagged.sum())


@pytest.mark.parametrize(("kind", "norm"), KINDS)
@settings(max_examples=15, deadline=None, database=None)
@given(rows=ROWS)
@example(rows=OVERFLOW)
def test_single_model_scores_that_are_not_finite_alert(scorers, kind, norm, rows):
    cont = np.asarray(rows, np.float32)
    scores = scorers[(kind, norm)].score(cont, NO_CAT[: len(rows)])
    routed = RoutedScores(scores, None, np.full(len(rows), 0.5))
    check_every_verdict(routed)


@pytest.mark.parametrize("kind", ["ae", "dae"])
@settings(max_examples=15, deadline=None, database=None)
@given(rows=ROWS, keys=st.lists(st.sampled_from(["a", "b", "unknown", None]), min_size=6))
@example(rows=OVERFLOW, keys=["a", "b"])
def test_entity_model_scores_that_are_not_finite_alert(entity_scorers, kind, rows, keys):
    cont = np.asarray(rows, np.float32)
    routed = entity_scorers[kind].score(cont, NO_CAT[: len(rows)], keys[: len(rows)])
    check_every_verdict(routed)


def test_the_overflow_example_does_overflow_every_model_kind(scorers):
    """The examples above test what they claim: the first row's score is not finite for
    every kind and norm (NaN with layer norm, where infinity minus infinity appears)."""
    cont = np.asarray(OVERFLOW, np.float32)
    for (kind, norm), scorer in scorers.items():
        s = scorer.score(cont, NO_CAT[:2]).scores
        assert not np.isfinite(s[0]) and np.isfinite(s[1]), (kind, norm, s)
        assert np.isnan(s[0]) == (norm == "layer"), (kind, norm, s)


def test_threshold_rule_on_plain_numbers():
    assert anomaly_reason(float("nan"), 1.0) == "non_finite_score"
    assert anomaly_reason(float("inf"), 1.0) == "non_finite_score"
    assert anomaly_reason(-float("inf"), 1.0) == "non_finite_score"
    assert anomaly_reason(1.0, 1.0) is None  # equal to the threshold is normal
    assert anomaly_reason(1.5, 1.0) == "over_threshold"
    got = is_anomalous([np.nan, 0.5, 2.0, np.inf], [1.0, 1.0, 1.0, 1e300])
    assert got.tolist() == [True, False, True, True]


def test_pipeline_score_and_trainer_evaluate_flag_an_overflowing_row(tmp_path):
    """The batch paths on real Parquet: a layer-norm model scores x0=3.4e38 as NaN."""
    publish_model(tmp_path / "store", SPEC, name="m", threshold=1e30, norm="layer")
    frame = pd.DataFrame(
        {
            "x0": [F32_MAX, 0.0, 1.0, 0.5],
            "x1": [0.0, 1.0, 1.0, 1.0],
            "x2": [0.0, 2.0, 2.0, 2.0],
            "x3": [0.0, 3.0, 3.0, 3.0],
            "label": [1, 0, 0, 1],
        }
    )
    frame.to_parquet(tmp_path / "rows.parquet")
    out = tmp_path / "scores.parquet"
    summary = score_parquet(
        str(tmp_path / "rows.parquet"), out, str(tmp_path / "store"), "m", device="cpu"
    )
    scored = pd.read_parquet(out)
    assert np.isnan(scored["score"][0]) and scored["is_anomaly"].tolist() == [1, 0, 0, 0]
    assert summary.anomalies == 1
    result = evaluate(
        EvaluationRequest(
            data=str(tmp_path / "rows.parquet"),
            model_store=str(tmp_path / "store"),
            name="m",
            label_column="label",
            device="cpu",
        )
    )
    numbers = result.summary()
    assert numbers["non_finite_scores"] == 1
    assert numbers["confusion"] == {"tp": 1, "fp": 0, "tn": 2, "fn": 1}
    ranked = np.where(np.isfinite(result.scores), result.scores, np.nanmax(result.scores) + 1)
    assert result.roc_auc == pytest.approx(skm.roc_auc_score(result.labels, ranked))  # NaN first
