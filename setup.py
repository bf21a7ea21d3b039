"""Pure-Python install of the ROS-free parts of sage_irp_ros (``pip install .``).

This installs the ``sage_irp_ros`` package (core, plugins, JSON schema) without the ROS parts:
neither the generated messages (``sage_irp_ros.msg``) nor the rclpy nodes (``sage_irp_ros.ros``);
those come from the ament_cmake build (CMakeLists.txt), which ``make setup`` and
``colcon build`` run. package.xml is the one source of the version.
"""
import os
import re

from setuptools import find_namespace_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _package_xml_version():
    with open(os.path.join(HERE, 'package.xml'), encoding='utf-8') as f:
        return re.search(r'<version>\s*([^<\s]+)\s*</version>', f.read()).group(1)


setup(
    name='sage_irp_ros',
    version=_package_xml_version(),
    description='SAGE iterative refinement primitive (IRP) for ROS 2: ROS-free core',
    license='Apache-2.0',
    maintainer='sage_irp_ros developers',
    maintainer_email='dev@sage-irp.invalid',
    python_requires='>=3.10',
    packages=find_namespace_packages(
        include=['sage_irp_ros', 'sage_irp_ros.*'],
        exclude=['sage_irp_ros.ros', 'sage_irp_ros.ros.*', 'sage_irp_ros.msg',
                 'sage_irp_ros.msg.*', '*.__pycache__', '*.__pycache__.*']),
    # Every plugin's committed weights (test_packaging checks that each weights file matches).
    package_data={'sage_irp_ros': ['schema/*.json', 'plugins/*/weights/*']},
    include_package_data=True,
    install_requires=['numpy', 'jsonschema', 'PyYAML'],
    # The model plugins; torch is left to the platform (JetPack ships its own CUDA build).
    extras_require={'plugins': ['torch', 'scipy', 'scikit-image']},
    zip_safe=False,
)
