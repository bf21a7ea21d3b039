# Environment for running sage_irp_ros code and tests after `make setup`:
#   . tools/env.sh
# (the Makefile's test target sets the same). Nothing else needs sourcing: the venv's python
# finds the ROS 2 libraries by itself. Also puts the package's executables (sage_irp_replay,
# sage_irp_record, sage_irp_all, the nodes: .venv/lib/sage_irp_ros, where `ros2 run` finds them
# on a ROS machine) and the venv's bin on PATH, once, so the README's commands work as written.
_sage_irp_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export AMENT_PREFIX_PATH="${_sage_irp_root}/.venv"
for _sage_irp_dir in "${_sage_irp_root}/.venv/bin" "${_sage_irp_root}/.venv/lib/sage_irp_ros"; do
  case ":${PATH}:" in
    *":${_sage_irp_dir}:"*) ;;
    *) export PATH="${_sage_irp_dir}:${PATH}" ;;
  esac
done
# Camera-size images between processes (issue #15): the shipped Fast DDS profile (shared memory
# with segments for several 640x480 frames, plus UDP), unless you set a profile of your own.
# Fast DDS 2 (Humble, Iron) reads FASTRTPS_DEFAULT_PROFILES_FILE; Fast DDS 3 (Jazzy and newer)
# reads FASTDDS_DEFAULT_PROFILES_FILE and warns on every start when the FASTRTPS_ one is set.
if [ -z "${FASTDDS_DEFAULT_PROFILES_FILE:-}${FASTRTPS_DEFAULT_PROFILES_FILE:-}" ]; then
  case "${ROS_DISTRO:-}" in
    humble|iron) _sage_irp_var=FASTRTPS_DEFAULT_PROFILES_FILE ;;
    *) _sage_irp_var=FASTDDS_DEFAULT_PROFILES_FILE ;;
  esac
  export "${_sage_irp_var}=${_sage_irp_root}/config/fastdds_camera.xml"
fi
unset _sage_irp_root _sage_irp_dir _sage_irp_var
