"""Lint as tests: ruff (pyflakes, pycodestyle, pep257 docstrings, bugbear, isort), xmllint."""

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY_PATHS = [p for p in ('sage_irp_ros', 'scripts', 'test', 'bench', 'launch')
            if os.path.exists(os.path.join(ROOT, p))]


def test_ruff_is_clean():
    out = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache', *PY_PATHS],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_package_xml_is_well_formed_format_3():
    xmllint = shutil.which('xmllint')
    if xmllint is None:
        pytest.fail('xmllint is missing: `make setup` installs libxml2-utils')
    out = subprocess.run([xmllint, '--noout', 'package.xml'], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    with open(os.path.join(ROOT, 'package.xml')) as f:
        text = f.read()
    assert re.search(r'<package\s+format="3"', text)
    assert '<name>sage_irp_ros</name>' in text
    assert '<build_type>ament_cmake</build_type>' in text


def test_every_script_is_executable_python():
    scripts = os.path.join(ROOT, 'scripts')
    for name in os.listdir(scripts):
        path = os.path.join(scripts, name)
        if name.startswith('.'):
            continue
        assert os.access(path, os.X_OK), f'{name} is not executable'
        with open(path) as f:
            assert f.readline().startswith('#!/usr/bin/env python3'), name


def test_core_has_no_ros_imports():
    # A plugin's folder is ROS-free except its node.py (the thin node of the node host).
    core = os.path.join(ROOT, 'sage_irp_ros', 'core')
    plugins = os.path.join(ROOT, 'sage_irp_ros', 'plugins')
    pattern = re.compile(r'^\s*(from|import)\s+(rclpy|rosidl|std_msgs|sensor_msgs|'
                         r'sage_irp_ros\.msg|sage_irp_ros\.ros)\b', re.M)
    for top in (core, plugins):
        for dirpath, _, files in os.walk(top):
            for fn in files:
                if fn.endswith('.py') and not (top == plugins and fn == 'node.py'):
                    with open(os.path.join(dirpath, fn)) as f:
                        assert not pattern.search(f.read()), f'{fn} imports ROS'
