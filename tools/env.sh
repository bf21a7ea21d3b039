# Environment for running sage_irp_ros code and tests after `make setup`:
#   . tools/env.sh
# (the Makefile's test target sets the same). Nothing else needs sourcing: the venv's python
# finds the ROS 2 libraries by itself.
_sage_irp_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export AMENT_PREFIX_PATH="${_sage_irp_root}/.venv"
unset _sage_irp_root
