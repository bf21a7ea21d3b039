"""The pure-Python wheel (``pip install .``, setup.py) carries every plugin's committed weights."""
import glob
import os
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_wheel_holds_every_plugins_weights_and_the_schema(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    for f in ('setup.py', 'package.xml'):
        shutil.copy(os.path.join(ROOT, f), src / f)
    shutil.copytree(os.path.join(ROOT, 'sage_irp_ros'), src / 'sage_irp_ros',
                    ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
    out = subprocess.run([sys.executable, '-m', 'pip', 'wheel', str(src), '--no-deps',
                          '--no-build-isolation', '-q', '-w', str(tmp_path / 'whl')],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel, = glob.glob(str(tmp_path / 'whl' / '*.whl'))
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = [os.path.relpath(p, ROOT).replace(os.sep, '/') for p in
              glob.glob(os.path.join(ROOT, 'sage_irp_ros', 'plugins', '*', 'weights', '*'))
              + glob.glob(os.path.join(ROOT, 'sage_irp_ros', 'schema', '*.json'))
              if os.path.isfile(p)]
    assert any('/audio/weights/enhancer.pt' in w for w in wanted)
    assert [w for w in wanted if w not in names] == []
    assert not any(n.startswith('sage_irp_ros/ros/') for n in names)
