"""Synthetic sensor records for the demo, the tests and the benchmarks.

Normal machines are driven by three hidden factors (load, ambient heat, wear), so their eight
readings are correlated the way an autoencoder can learn; the operating mode and the door
flag follow the load. Injected anomalies break that structure in ways a per-column range
check would miss (plausible values, wrong combination) as well as in blunt ways (spikes).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SENSORS = [
    "temperature",
    "pressure",
    "vibration",
    "rpm",
    "voltage",
    "current",
    "humidity",
    "flow",
]
MODES = ["idle", "normal", "boost"]
_MIX = np.array(
    [
        [0.9, 0.6, 0.1],
        [0.7, -0.2, 0.3],
        [0.5, 0.1, 0.8],
        [1.0, 0.0, -0.2],
        [0.1, -0.3, 0.2],
        [0.8, 0.2, 0.4],
        [-0.2, 0.9, 0.0],
        [0.6, -0.5, -0.3],
    ]
)
_OFFSET = np.array([60.0, 4.0, 0.5, 1500.0, 230.0, 12.0, 40.0, 8.0])
_SCALE = np.array([8.0, 0.6, 0.15, 300.0, 3.0, 2.5, 10.0, 1.5])


def _readings(factors: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    raw = factors @ _MIX.T + noise * rng.standard_normal((len(factors), len(SENSORS)))
    out: np.ndarray = _OFFSET + _SCALE * raw  # (n, 8)
    return out


def normal_frame(n: int, seed: int = 0, start_id: int = 0) -> pd.DataFrame:
    """n normal records with columns machine_id, the sensors, mode, door_open."""
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((n, 3))
    df = pd.DataFrame(_readings(factors, rng, noise=0.1), columns=SENSORS)
    load = factors[:, 0]
    df["mode"] = np.where(load < -0.6, "idle", np.where(load > 0.8, "boost", "normal"))
    df["door_open"] = (load < -1.2) & (rng.random(n) < 0.5)
    df.insert(0, "machine_id", [f"m-{start_id + i:07d}" for i in range(n)])
    return df


def anomaly_frame(n: int, seed: int = 1, start_id: int = 0) -> pd.DataFrame:
    """n anomalous records, a mix of broken correlations, spikes and wrong modes."""
    rng = np.random.default_rng(seed)
    df = normal_frame(n, seed=seed + 10_000, start_id=start_id)
    kind = rng.integers(0, 3, size=n)
    values = df[SENSORS].to_numpy(copy=True)
    # 0: readings from independent factors per sensor: each plausible, jointly impossible
    shuffled = _OFFSET + _SCALE * rng.standard_normal((n, len(SENSORS))) * 1.5
    values[kind == 0] = shuffled[kind == 0]
    # 1: a spike on one or two sensors
    for i in np.flatnonzero(kind == 1):
        cols = rng.choice(len(SENSORS), size=rng.integers(1, 3), replace=False)
        values[i, cols] += _SCALE[cols] * rng.choice([-1, 1], size=len(cols)) * rng.uniform(5, 8)
    df[SENSORS] = values
    # 2: a heavy load reading while the machine reports idle with the door open
    heavy = kind == 2
    df.loc[heavy, "mode"] = "idle"
    df.loc[heavy, "door_open"] = True
    df.loc[heavy, SENSORS] = _OFFSET + _SCALE * (np.array([[2.5, 0, 0]]) @ _MIX.T)
    df["machine_id"] = [f"x-{start_id + i:07d}" for i in range(n)]
    return df


def mixed_stream(n_normal: int, n_anomalies: int, seed: int = 7) -> tuple[pd.DataFrame, set[str]]:
    """Normal and anomalous records shuffled together, and the ids of the anomalies."""
    normal = normal_frame(n_normal, seed=seed, start_id=0)
    bad = anomaly_frame(n_anomalies, seed=seed + 1, start_id=0)
    both = pd.concat([normal, bad], ignore_index=True)
    order = np.random.default_rng(seed).permutation(len(both))
    return both.iloc[order].reset_index(drop=True), set(bad["machine_id"])


def to_records(df: pd.DataFrame) -> list[dict[str, object]]:
    """JSON-ready dicts (numpy scalars become Python ones)."""
    return [
        {str(k): (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        for row in df.to_dict(orient="records")
    ]


def stream_forever(
    bootstrap: str, topic: str, rate: float, count: int = 0, anomaly_rate: float = 0.01
) -> int:
    """Produce records at about ``rate`` per second, ``count`` of them (0: until interrupted)."""
    import time

    import msgspec
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    sent, chunk, started = 0, max(1, int(rate)), time.monotonic()
    try:
        while count == 0 or sent < count:
            n_bad = int(np.random.default_rng(sent).binomial(chunk, anomaly_rate))
            frame, _ = mixed_stream(chunk - n_bad, n_bad, seed=sent)
            for rec in to_records(frame):
                if count and sent >= count:
                    break
                key = str(rec["machine_id"]).encode()
                producer.send(topic, key=key, value=msgspec.json.encode(rec))
                sent += 1
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    except KeyboardInterrupt:
        pass
    finally:
        producer.flush()
        producer.close()
    return sent
