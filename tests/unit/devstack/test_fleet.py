"""The fleet sample data: machines with their own normal ranges, anomalies normal for the fleet."""

import numpy as np

from pipeline.devstack.fleet import KINDS, fleet_frame, fleet_stream, kind_of
from pipeline.devstack.sampledata import SENSORS


def test_each_machine_varies_far_less_than_the_fleet():
    frame = fleet_frame(20_000, 10, seed=3)
    assert frame.machine_id.nunique() == 10 and frame.reading_id.is_unique
    within = frame.groupby("machine_id")[SENSORS].std().mean()
    across = frame[SENSORS].std()
    assert (within < 0.6 * across).all(), (within / across).round(2).to_dict()


def test_foreign_and_drift_anomalies_stay_inside_the_fleets_range():
    normal = fleet_frame(20_000, 10, seed=3)
    stream, injected = fleet_stream(1000, 60, 10, seed=4)
    kinds = {kind_of(i) for i in injected}
    assert kinds == set(KINDS) and kind_of("r-0000001") == "normal"
    lo, hi = normal[SENSORS].min(), normal[SENSORS].max()
    bad = stream[stream.reading_id.isin(injected)]
    for kind in ("foreign", "drift"):
        rows = bad[[kind_of(i) == kind for i in bad.reading_id]][SENSORS]
        inside = ((rows >= lo) & (rows <= hi)).all(axis=1)
        assert inside.mean() > 0.9, kind
    spikes = bad[[kind_of(i) == "spike" for i in bad.reading_id]][SENSORS]
    assert (~((spikes >= lo) & (spikes <= hi)).all(axis=1)).mean() > 0.5
    assert np.isin(sorted(injected), stream.reading_id).all()
