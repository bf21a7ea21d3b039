# sage_irp_ros: set-up, build and tests without sourcing any ROS set-up script.
#
#   make setup   idempotent: Debian packages, .venv with requirements.txt, build msg/ and
#                install the package into .venv (seconds when nothing changed)
#   make test    setup, then the whole pytest suite under test/
#   make bench   setup, then the benchmarks (out/bench/{vision,language,orchestrator}.json)
#   make soak    setup, then the 30-minute soak and the fleet benchmark (network namespaces)
#   make demo    replay data/sample_bag through the nodes, record and score the outputs into
#                out/demo/ (`python -m sage_irp_ros.demo`, docs/DEMO.md); then places that
#                recur, a sleep and the days after it (`python -m sage_irp_ros.plugins.memory.demo`);
#                then the bag's speech heard as recorded and in noise, enhanced, recognised and
#                repaired (`python -m sage_irp_ros.plugins.audio.demo`)
#   make clean   remove build outputs and caches (`make distclean` also removes .venv)
#
# How the package is found: the ROS 2 wheels install into the venv as an ament prefix
# (.venv/lib, .venv/share, site-packages). CMake installs this package into the same prefix
# (CMAKE_INSTALL_PREFIX=.venv): Python package and generated msg in site-packages, type
# support libraries in .venv/lib (on the LD_LIBRARY_PATH that the ROS wheels' .pth sets when
# the venv's python starts), executables in .venv/lib/sage_irp_ros, launch/config files in
# .venv/share/sage_irp_ros. AMENT_PREFIX_PATH=.venv (tools/env.sh) lets ament_index find it.

SHELL := /bin/bash
.DEFAULT_GOAL := setup

PYTHON   ?= python3
VENV     := .venv
VENV_ABS := $(abspath $(VENV))
VPY      := $(VENV)/bin/python
BUILD_DIR := build/cmake
NPROC    := $(shell nproc 2>/dev/null || echo 2)

# Debian packages the project needs (xmllint: package.xml checks in tests; wordnet-base and
# fortunes: the language plugin's training and held-out text; flite: the speech of the sample
# bag, tools/make_sample_bag.py).
APT_PACKAGES := cmake g++ make libxml2-utils wordnet-base fortunes flite espeak-ng pocketsphinx-testdata alsa-utils

# Stamp files: the venv's live in .venv, the build's in build/, so removing either resets them.
REQ_STAMP     := $(VENV)/.requirements.stamp
CONF_STAMP    := $(BUILD_DIR)/.configure.stamp
INSTALL_STAMP := $(VENV)/.install.stamp

# Everything `cmake --install` copies from the source tree: a change (or an added or removed
# file, seen through the folders' times) re-installs the package, which takes seconds.
MSG_FILES    := $(wildcard msg/*.msg)
INSTALL_SRCS := $(shell find sage_irp_ros scripts launch config -name __pycache__ -prune \
                  -o \( -type d -o -type f \) -not -name '*.pyc' -print 2>/dev/null)

# Environment for the build: rosidl must find the typesupport packages in the venv (quirk 2),
# and cmake/rosidl must run the venv's python.
BUILD_ENV := PATH="$(VENV_ABS)/bin:$$PATH" AMENT_PREFIX_PATH="$(VENV_ABS)" \
             CMAKE_PREFIX_PATH="$(VENV_ABS)"

# Environment for running code (same as tools/env.sh): ament_index finds the venv prefix.
RUN_ENV := AMENT_PREFIX_PATH="$(VENV_ABS)"

.PHONY: setup test demo bench bench-gpu soak clean distclean apt-deps

setup: $(INSTALL_STAMP)

# --- Debian packages: installed only when one is missing (needs root, or sudo).
apt-deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null; then sudo="sudo"; \
	  else echo "error: root needed to install:$$missing" >&2; exit 1; fi; \
	  $$sudo apt-get update && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

# --- The venv and its requirements.
$(VPY): | apt-deps
	$(PYTHON) -m venv $(VENV)

$(REQ_STAMP): requirements.txt requirements-nodeps.txt | $(VPY) apt-deps
	$(VPY) -m pip install --progress-bar off -r requirements.txt
	$(VPY) -m pip install --progress-bar off --no-deps -r requirements-nodeps.txt
	@# Quirk 1: the message wheels' exported CMake files name the wheel builder's Python and
	@# numpy include folders; point them at this venv's (after every (re)install of a wheel).
	@py_inc=$$($(VPY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])') && \
	np_inc=$$($(VPY) -c 'import numpy; print(numpy.get_include())') && \
	grep -rlZ --include='*.cmake' '/opt/python/cp' $(VENV)/share | xargs -0 -r sed -i \
	  -e "s#/opt/python/cp[0-9]*-cp[0-9]*/lib/python[0-9.]*/site-packages/numpy/_core/include#$$np_inc#g" \
	  -e "s#/opt/python/cp[0-9]*-cp[0-9]*/include/python[0-9.]*#$$py_inc#g"
	touch $@

# --- Configure the ament_cmake build, installing into the venv.
$(CONF_STAMP): $(REQ_STAMP) CMakeLists.txt package.xml
	$(BUILD_ENV) cmake -S . -B $(BUILD_DIR) \
	  -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_INSTALL_PREFIX="$(VENV_ABS)" \
	  -DCMAKE_INSTALL_RPATH="$(VENV_ABS)/lib" \
	  -DPython3_EXECUTABLE="$(VENV_ABS)/bin/python" \
	  -DBUILD_TESTING=OFF
	touch $@

# --- Build msg/ (incremental) and install the package into the venv. The previously
# installed copy is removed first, so files deleted from the sources disappear too.
$(INSTALL_STAMP): $(CONF_STAMP) $(MSG_FILES) $(INSTALL_SRCS)
	$(BUILD_ENV) cmake --build $(BUILD_DIR) -j $(NPROC)
	@site=$$($(VPY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))') && \
	rm -rf "$$site/sage_irp_ros" $(VENV)/lib/sage_irp_ros \
	  $(VENV)/share/sage_irp_ros/launch $(VENV)/share/sage_irp_ros/config
	$(BUILD_ENV) cmake --install $(BUILD_DIR) > $(BUILD_DIR)/install.log
	@# Node executables: run them with the venv's python (their shebang says python3).
	@for f in $(VENV)/lib/sage_irp_ros/*; do \
	  [ -f "$$f" ] && sed -i '1s|^#!.*python3\?[[:space:]]*$$|#!$(VENV_ABS)/bin/python|' "$$f"; \
	done; true
	touch $@

# --- Tests: the whole suite; the exit status is pytest's.
test: setup
	$(RUN_ENV) $(VPY) -m pytest test/ $(PYTEST_ARGS)

# --- Benchmarks (not tests: they report speed and quality figures into out/bench/*.json).
# Each registered plugin's own benchmark (PluginSpec.bench), then the orchestrator's
# (bench/run_all.py); stops at the first failure with its exit status.
bench: setup
	$(RUN_ENV) $(VPY) bench/run_all.py

# --- GPU benchmark (issue #16; needs CUDA, exits 2 without it): every plugin on CUDA in fp32 and
# fp16, eager and graphed, batch 1 and batched, the camera path (out/bench/gpu.json; docs/GPU.md).
bench-gpu: setup
	$(RUN_ENV) $(VPY) bench/gpu_bench.py

# --- Faults, soak and fleet (issue #15; not in CI): each listed fault injected into node processes
# and 30 minutes of the bag in a loop through all nodes (out/bench/reliability.json), then robots
# in network namespaces (needs root; out/bench/fleet.json).
soak: setup
	$(RUN_ENV) OMP_NUM_THREADS=1 $(VPY) bench/faults_bench.py
	$(RUN_ENV) OMP_NUM_THREADS=1 $(VPY) bench/soak.py --minutes 30
	$(RUN_ENV) OMP_NUM_THREADS=1 $(VPY) bench/fleet_bench.py

# --- Demo: the sample bag through the nodes; exit status 0 only when every stage worked.
demo: setup
	$(RUN_ENV) $(VPY) -m sage_irp_ros.demo
	$(RUN_ENV) $(VPY) -m sage_irp_ros.plugins.memory.demo
	$(RUN_ENV) $(VPY) -m sage_irp_ros.plugins.audio.demo

clean:
	rm -rf build install log out .pytest_cache .ruff_cache .hypothesis *.egg-info $(INSTALL_STAMP)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
