"""Device temperature and throttling (issue #16, Jetson part): a fake thermal-zone tree."""

import os

from sage_irp_ros.core.thermal import read_thermal


def zone(root, n, kind, temp_c, trips=()):
    """Write ``thermal_zone<n>`` with its type, temperature (C) and trip points (type, C)."""
    d = os.path.join(root, f'thermal_zone{n}')
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, 'type'), 'w') as f:
        f.write(kind + '\n')
    with open(os.path.join(d, 'temp'), 'w') as f:
        f.write(f'{int(temp_c * 1000)}\n')
    for k, (ttype, tc) in enumerate(trips):
        with open(os.path.join(d, f'trip_point_{k}_type'), 'w') as f:
            f.write(ttype + '\n')
        with open(os.path.join(d, f'trip_point_{k}_temp'), 'w') as f:
            f.write(f'{int(tc * 1000)}\n')
    return d


def test_no_zones_reads_as_none(tmp_path):
    assert read_thermal(str(tmp_path)) is None
    assert read_thermal(str(tmp_path / 'missing')) is None


def test_zones_trips_and_throttling(tmp_path):
    root = str(tmp_path)
    zone(root, 0, 'CPU-therm', 51.5, [('active', 40.0), ('passive', 95.0), ('critical', 105)])
    zone(root, 1, 'GPU-therm', 62.0, [('hot', 90.0)])
    r = read_thermal(root)
    assert r.zones == {'CPU-therm': 51.5, 'GPU-therm': 62.0} and r.max_c == 62.0
    assert r.trips == {'CPU-therm': 95.0, 'GPU-therm': 90.0}  # passive first, else hot
    assert r.throttling == [] and r.hottest == 'GPU-therm' and 'GPU-therm 62.0 C' in r.describe()
    zone(root, 0, 'CPU-therm', 96.0, [('active', 40.0), ('passive', 95.0), ('critical', 105)])
    r = read_thermal(root)
    assert r.throttling == ['CPU-therm'] and 'throttling: CPU-therm at 96.0 C' in r.describe()


def test_garbage_is_skipped_and_names_stay_apart(tmp_path):
    root = str(tmp_path)
    zone(root, 0, 'SOC-therm', 40.0)
    zone(root, 1, 'SOC-therm', 45.0)
    bad = zone(root, 2, 'broken', 40.0)
    with open(os.path.join(bad, 'temp'), 'w') as f:
        f.write('not a number\n')
    zone(root, 3, 'absurd', 900.0)
    r = read_thermal(root)
    assert r.zones == {'SOC-therm': 40.0, 'SOC-therm.1': 45.0} and r.throttling == []
