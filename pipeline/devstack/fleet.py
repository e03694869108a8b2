"""A fleet of machines whose normal ranges differ: sample data for per-machine models.

Each machine has its own operating point: a typical load, heat and wear (the hidden factors
of ``pipeline.devstack.sampledata``) and a calibration bias per sensor. Within one machine the
readings vary little around that point; across the fleet they span a wide range. So a reading
can be perfectly normal for the fleet and still abnormal for the machine that sent it, which
is what only a per-machine model can see:

- ``foreign``: a machine reports another machine's normal readings (a swapped sensor board,
  a mislabelled machine, a stolen credential in the user-behaviour analogy);
- ``drift``: one sensor of a machine sits at the level another machine's sensor has;
- ``spike``: a sensor far out of any machine's range (both kinds of model catch these).

Columns: ``reading_id`` (unique per record), ``machine_id`` (the entity), the eight sensors,
``mode``, ``door_open``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.devstack.sampledata import _MIX, _OFFSET, _SCALE, SENSORS

KINDS = ("foreign", "drift", "spike")


def machine_names(machines: int) -> list[str]:
    return [f"press-{i:03d}" for i in range(machines)]


def _profiles(machines: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(operating point (M, 3), sensor bias (M, 8)) of every machine, from ``seed`` alone."""
    rng = np.random.default_rng([seed, 0xF1EE7])
    return rng.normal(0.0, 1.2, (machines, 3)), rng.normal(0.0, 0.8, (machines, len(SENSORS)))


def _readings(
    machine: np.ndarray, point: np.ndarray, bias: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    factors = point[machine] + 0.35 * rng.standard_normal((len(machine), 3))
    raw = factors @ _MIX.T + bias[machine] + 0.08 * rng.standard_normal((len(machine), 8))
    out: np.ndarray = _OFFSET + _SCALE * raw
    return out


def _frame(
    machine: np.ndarray, machines: int, values: np.ndarray, ids: list[str], seed: int
) -> pd.DataFrame:
    names = np.array(machine_names(machines))
    df = pd.DataFrame(values, columns=SENSORS)
    load = (values[:, 3] - _OFFSET[3]) / _SCALE[3]  # rpm follows the load
    df["mode"] = np.where(load < -0.6, "idle", np.where(load > 0.8, "boost", "normal"))
    rng = np.random.default_rng(seed)
    df["door_open"] = (load < -1.2) & (rng.random(len(df)) < 0.5)
    df.insert(0, "machine_id", names[machine])
    df.insert(0, "reading_id", ids)
    return df


def fleet_frame(n: int, machines: int, seed: int = 0, start_id: int = 0) -> pd.DataFrame:
    """``n`` normal readings spread evenly over ``machines`` machines (profiles of seed 0)."""
    rng = np.random.default_rng(seed)
    point, bias = _profiles(machines, 0)
    machine = rng.integers(0, machines, size=n)
    ids = [f"r-{start_id + i:07d}" for i in range(n)]
    return _frame(machine, machines, _readings(machine, point, bias, rng), ids, seed + 1)


def fleet_anomalies(n: int, machines: int, seed: int = 1) -> pd.DataFrame:
    """``n`` anomalous readings, kinds in turn (``foreign``, ``drift``, ``spike``); ids
    ``x-<kind>-NNNNNNN``."""
    rng = np.random.default_rng([seed, 0xBAD])
    point, bias = _profiles(machines, 0)
    machine = rng.integers(0, machines, size=n)
    other = (machine + rng.integers(1, machines, size=n)) % machines
    values = _readings(machine, point, bias, rng)
    kind = np.arange(n) % len(KINDS)
    foreign = kind == 0
    values[foreign] = _readings(other[foreign], point, bias, rng)
    for i in np.flatnonzero(kind == 1):
        j = rng.integers(0, len(SENSORS))
        values[i, j] = _readings(other[i : i + 1], point, bias, rng)[0, j]
    for i in np.flatnonzero(kind == 2):
        j = rng.integers(0, len(SENSORS))
        values[i, j] += _SCALE[j] * rng.choice([-1, 1]) * rng.uniform(6, 9)
    ids = [f"x-{KINDS[k]}-{i:07d}" for i, k in enumerate(kind)]
    return _frame(machine, machines, values, ids, seed + 2)


def fleet_stream(
    n_normal: int, n_anomalies: int, machines: int, seed: int = 7
) -> tuple[pd.DataFrame, set[str]]:
    """Normal and anomalous readings shuffled together, and the ids of the anomalies."""
    normal = fleet_frame(n_normal, machines, seed=seed, start_id=0)
    bad = fleet_anomalies(n_anomalies, machines, seed=seed + 1)
    both = pd.concat([normal, bad], ignore_index=True)
    order = np.random.default_rng(seed).permutation(len(both))
    return both.iloc[order].reset_index(drop=True), set(bad["reading_id"])


def kind_of(reading_id: str) -> str:
    """The anomaly kind named in an id from ``fleet_anomalies`` ('normal' otherwise)."""
    parts = reading_id.split("-")
    return parts[1] if parts[0] == "x" and len(parts) == 3 else "normal"
